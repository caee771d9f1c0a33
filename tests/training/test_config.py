from dataclasses import dataclass, field

import pytest

from groupdiff.training.config_files import ConfigError, dump_config, load_config


@dataclass
class Inner:
    rate: float = 0.1
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    window: tuple[float, float] = (0.0, 1.0)
    encoder: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 20\ninner:\n  rate: 1\n")
    config = load_config(Outer, path, ["inner.sizes=[4, 8]", "window=[0.2, 0.9]", "encoder=effnet"])
    assert config == Outer(steps=20, window=(0.2, 0.9), encoder="effnet", inner=Inner(rate=1.0, sizes=(4, 8)))
    dumped = dump_config(config, tmp_path / "resolved.yaml")
    assert load_config(Outer, dumped) == config


def test_floats_written_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads ``1e-4`` as a string: a float field still takes it, as users write learning rates."""
    path = tmp_path / "run.yaml"
    path.write_text("inner:\n  rate: 3e-4\n")
    config = load_config(Outer, path, ["window=[1e-3, 2E0]"])
    assert config.inner.rate == 3e-4 and config.window == (1e-3, 2.0)


def test_toml_files(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "t"\n[inner]\nrate = 0.5\n')
    assert load_config(Outer, path).inner.rate == 0.5


@pytest.mark.parametrize(
    "overrides,message",
    [(["stepz=3"], r"unknown key\(s\) \['stepz'\]"), (["steps=ten"], "config.steps: expected int"),
     (["inner.rate=[1]"], "config.inner.rate"), (["window=[1]"], "expected 2 values"), (["steps"], "key=value"),
     (["inner.rate=fast"], "config.inner.rate: expected float"), (["inner.rate=nan"], "finite")],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, overrides)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_recipes_are_found_by_short_and_full_name(tmp_path):
    from groupdiff.training.config_files import find_config

    assert find_config("fmnist-tiny", "train").name == "train-fmnist-tiny.yaml"
    assert find_config("train-fmnist-tiny", "train") == find_config("fmnist-tiny", "train")
    assert find_config("prepare-fmnist-pixel", "prepare").name == "prepare-fmnist-pixel.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("steps: 3\n")
    assert find_config(str(own), "train") == own
    with pytest.raises(ConfigError, match="recipes: .*fmnist-tiny"):
        find_config("fmnist-huge", "train")


def test_every_shipped_recipe_loads_into_its_config():
    from pathlib import Path

    import groupdiff
    from groupdiff.distill.config import DistillConfig
    from groupdiff.training.config import TrainConfig
    from groupdiff.training.prepare import PrepareConfig

    kinds = {"train": TrainConfig, "distill": DistillConfig, "prepare": PrepareConfig}
    recipes = sorted((Path(groupdiff.__file__).parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 10
    for recipe in recipes:
        kind = kinds[recipe.name.split("-", 1)[0]]
        assert isinstance(load_config(kind, recipe), kind), recipe.name
