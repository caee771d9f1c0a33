"""Fixtures for every test: deterministic torch on two threads, a tiny GroupDiT. Helpers live in tests/support."""

import pytest
import torch

from groupdiff.model import GroupDiT, model_config

from .support.models import randomize


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
