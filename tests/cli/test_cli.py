import json
import subprocess
import sys

from PIL import Image

from groupdiff.cli import main
from groupdiff.model import GroupDiT, model_config, save_model
from tests.support.models import randomize
from tests.support.processes import NO_TORCH


def test_sample_writes_a_grid_with_one_row_per_group(tmp_path):
    config = model_config("DiT-T/4", input_size=28, in_channels=1, depth=2, num_classes=10)
    checkpoint = save_model(tmp_path / "ckpt", randomize(GroupDiT(config)))
    out = tmp_path / "grid.png"
    args = ["sample", "--checkpoint", str(checkpoint), "--groups", "3", "--group-size", "2", "--steps", "2",
            "--guidance-scale", "1.0", "--class", "4", "--out", str(out)]
    assert main(args) == 0
    image = Image.open(out)
    # 2 columns and 3 rows of 28-px images with 2-px padding, upscaled 4x
    assert image.size == (4 * (2 * 30 + 2), 4 * (3 * 30 + 2))


def test_bad_input_exits_with_code_2(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    assert main(["sample", "--untrained", "DiT-T/2", "--class", "11", "--steps", "1"]) == 2
    assert "--class [11] outside 0..9" in capsys.readouterr().err


def test_bench_model_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "model", "--cases", "tiny", "--group-sizes", "1", "4", "--repeats", "1",
                 "--out", str(out)]) == 0
    assert "analytic_ratio" in capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["group_size"] for r in rows] == [1, 4]
    assert rows[0]["analytic_ratio"] == 1.0 and rows[1]["analytic_ratio"] > 1.0
    assert report["machine"]["cpu_count"] >= 1 and report["command"].startswith("groupdiff bench model --cases tiny")


def test_a_verb_without_its_extra_says_what_to_install():
    """Where torch is missing (the base install) the CLI still starts; `serve` exits 3 naming its extra."""
    script = NO_TORCH + "from groupdiff.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, "serve", "--checkpoint", "x"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "needs the 'serve' extra" in done.stderr and "pip install 'groupdiff[serve]'" in done.stderr
    helped = subprocess.run([sys.executable, "-c", script, "generate", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "--class" in helped.stdout, helped.stderr
