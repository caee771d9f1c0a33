"""Small models and inputs shared by the model, serving and distillation tests."""

import torch


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with noise: DiT's zero-initialised adaLN and output layers would
    otherwise make the network output 0 and hide any bug in attention."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def inputs(config, batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=generator)
    t = torch.rand(batch, generator=generator)
    y = torch.randint(0, config.num_classes, (batch,), generator=generator)
    return x, t, y
