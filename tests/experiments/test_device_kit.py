"""The device kit rebuilds a prepared folder that trains exactly like the original."""


import pytest
import torch

from groupdiff.experiments.device_kit import main, pack, unpack
from groupdiff.training.data import FASHION_MNIST_DIR
from groupdiff.training.plan import GroupBatchPlan, PlanConfig
from groupdiff.training.prepared import load_prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from groupdiff.cli import main as cli

    root = tmp_path_factory.mktemp("kit") / "data"
    assert cli(["prepare", "--data", FASHION_MNIST_DIR, "--limit", "200", "--space", "pixel", "--encoders",
                "efficientnet", "class", "--out", str(root)]) == 0
    return root


def test_an_unpacked_kit_has_the_same_samples_and_draws_the_same_groups(prepared, tmp_path, capsys):
    main(["pack", str(prepared), str(tmp_path / "kit.npz")])
    assert "kit.npz" in capsys.readouterr().out
    unpack(tmp_path / "kit.npz", tmp_path / "rebuilt")
    original, rebuilt = load_prepared(prepared), load_prepared(tmp_path / "rebuilt")
    assert torch.equal(original.samples, rebuilt.samples) and torch.equal(original.labels, rebuilt.labels)
    assert rebuilt.encoders() == original.encoders() and rebuilt.class_names == original.class_names
    for query in ("efficientnet", "class"):
        mine, theirs = original.neighbours(query), rebuilt.neighbours(query)
        assert all(torch.equal(mine.candidates(i), theirs.candidates(i)) for i in range(len(original.labels)))
        config = PlanConfig(mode="groupdiff-l", group_size=4, group_share=0.5, query=query)
        plans = [GroupBatchPlan(config, n, len(original.labels), 32, 1, seed=3) for n in (mine, theirs)]
        for step in range(8):
            a, b = (plan.batch(step, 0) for plan in plans)
            assert torch.equal(a.singles, b.singles) and torch.equal(a.groups, b.groups)
    original_ids = original.neighbours("efficientnet").indices
    assert torch.equal(original_ids, rebuilt.neighbours("efficientnet").indices)


def test_unpacking_never_overwrites_and_latent_folders_are_refused(prepared, tmp_path):
    pack(prepared, tmp_path / "kit.npz")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        unpack(tmp_path / "kit.npz", tmp_path / "taken")
    latent = tmp_path / "latent"
    latent.mkdir()
    info = (prepared / "prepare.json").read_text().replace('"space": "pixel"', '"space": "latent"')
    (latent / "prepare.json").write_text(info)
    for name in ("samples.safetensors", "config.yaml"):
        (latent / name).symlink_to(prepared / name)
    with pytest.raises(ValueError, match="latent-space"):
        pack(latent, tmp_path / "latent.npz")
