import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from groupdiff.model import GroupDiT, model_config


def sigterm_once_logging(arguments: list[str], log: Path, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m groupdiff <arguments>``, send SIGTERM once ``log`` exists (training has taken a
    step), and return its exit code and combined output."""
    process = subprocess.Popen([sys.executable, "-m", "groupdiff", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while not log.is_file() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with noise: DiT's zero-initialised adaLN and output layers would
    otherwise make the network output 0 and hide any bug in attention."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config():
    return model_config("DiT-T/4", input_size=16, in_channels=2, depth=3, num_classes=5, max_group_size=4)


@pytest.fixture
def tiny_model(tiny_config):
    return randomize(GroupDiT(tiny_config)).eval()


def inputs(config, batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=generator)
    t = torch.rand(batch, generator=generator)
    y = torch.randint(0, config.num_classes, (batch,), generator=generator)
    return x, t, y
