"""Fixtures shared by the training tests."""

import pytest

from groupdiff.cli import main
from tests.support.training import FMNIST


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "fmnist"
    assert main(["prepare", "--data", FMNIST, "--limit", "256", "--space", "pixel", "--encoders", "class", "random",
                 "--out", str(out)]) == 0
    return out
