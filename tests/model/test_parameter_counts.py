"""Parameter counts against the DiT paper (ImageNet 256: 32×32×4 latents, 1000 classes)."""

import pytest
import torch

from groupdiff.model import GroupDiT, model_config

# DiT paper, trainable parameters (the frozen position embedding excluded)
DIT_PAPER_MILLIONS = {"DiT-S/2": 32.9, "DiT-B/2": 130.3, "DiT-XL/2": 674.8}


@pytest.mark.parametrize("name", sorted(DIT_PAPER_MILLIONS))
def test_parameter_counts_match_the_dit_paper(name):
    config = model_config(name, input_size=32, in_channels=4, num_classes=1000, sample_embedding="none")
    with torch.device("meta"):
        model = GroupDiT(config)
    count = model.num_parameters()
    # DiT learns a variance: its output layer has 2C channels; a velocity model needs C.
    sigma_outputs = config.patch_size**2 * config.in_channels
    sigma_head = config.hidden_size * sigma_outputs + sigma_outputs
    assert round((count + sigma_head) / 1e6, 1) == DIT_PAPER_MILLIONS[name]

    with torch.device("meta"):
        grouped = GroupDiT(config.replace(sample_embedding="adaln", max_group_size=4))
    assert grouped.num_parameters() - count == 4 * config.hidden_size  # the sample embedding table
