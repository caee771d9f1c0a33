"""`groupdiff bench quality` end to end at micro scale (real trainer, real metrics, no FID), its resume,
its errors, the sampling-time schedule it passes to generation, and the table's statistics."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from groupdiff.cli import build_parser, main
from groupdiff.commands.bench import quality_budget
from groupdiff.evaluation.classifier import ClassifierConfig, save_classifier, train_classifier
from groupdiff.evaluation.generation import Generator, chunk_seed, generate_set
from groupdiff.experiments.quality_claims import claims, claims_markdown
from groupdiff.experiments.quality_report import pearson, spread
from groupdiff.experiments.quality_rows import PRESETS, ROWS, check_rows, layer_ranges
from groupdiff.model import GroupAttentionSchedule, GroupDiT, Guidance, model_config
from groupdiff.training.data import FASHION_MNIST_DIR, load_fashion_mnist
from tests.support.models import randomize
from tests.support.processes import sigterm_once_logging

pytestmark = pytest.mark.integration  # trains and scores whole benchmark rows (make test-fast skips it)

MICRO = ["--steps", "3", "--batch-size", "32", "--num-samples", "80", "--fid-samples", "0", "--scales", "0", "1",
         "--sample-steps", "2", "--ablation-samples", "80", "--reference-count", "40",
         "--set", "model_overrides={depth: 2, hidden_size: 64, num_heads: 4}", "--set", "precision=fp32",
         "--set", "sample.rows=2", "--set", "sample.steps=2", "--set", "log_every=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    assert main(["prepare", "--data", FASHION_MNIST_DIR, "--limit", "256", "--space", "pixel", "--encoders",
                 "efficientnet", "class", "random", "--out", str(root / "data")]) == 0
    data = load_fashion_mnist(split="train", limit=300)
    images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
    classifier = train_classifier(images, data.labels.numpy(), ClassifierConfig(), steps=5, batch_size=32)
    save_classifier(root / "classifier", classifier, {"dataset": "fmnist-300", "test_accuracy": None})
    return root


def bench(root, out, *extra):
    return main(["bench", "quality", "--data", str(root / "data"), "--classifier", str(root / "classifier"),
                 "--cache", str(root / "cache"), "--out", str(out), *MICRO, *extra])


def test_micro_run_writes_results_table_and_plot_and_a_rerun_skips_finished_rows(setup, capsys):
    out = setup / "bench"
    assert bench(setup, out, "--rows", "baseline", "l-uc4") == 0
    report = json.loads((out / "results.json").read_text())
    assert [(r["row"], r["seed"]) for r in report["runs"]] == [("baseline", 0), ("l-uc4", 0)]
    assert report["command"].startswith("groupdiff bench quality") and report["settings"]["steps"] == 3
    baseline, grouped = report["runs"]
    assert set(baseline["sweep"]) == {"0.0", "1.0"} and baseline["best_scale"] == 1.0
    assert "s_cross" not in baseline["no_cfg"] and "fid" not in baseline["no_cfg"]  # groups of one; no FID asked
    assert 0 <= grouped["no_cfg"]["s_cross"] <= 1 and grouped["no_cfg"]["diversity_ratio"] > 0
    assert grouped["cfg"]["fd_classifier"] == grouped["sweep"]["1.0"]["fd_classifier"]
    assert (out / "l-uc4/seed-0/checkpoints/step-0000003").is_dir()
    ablation = report["ablations"]  # Tables 2 and 3 on l-uc4 at its chosen scale
    assert ablation["row"] == "l-uc4" and ablation["scale"] == grouped["best_scale"]
    assert list(ablation["windows"]) == ["everywhere (default)", "first 20%", "first 50%", "last 50%"]
    assert list(ablation["layers"]) == ["no layers", "layers 0-0", "layers 1-1"]
    everywhere = ablation["windows"]["everywhere (default)"]  # same samples as the sweep at that scale
    assert everywhere["fd_classifier"] == pytest.approx(grouped["cfg"]["fd_classifier"])
    table = (out / "table.md").read_text()
    assert "| baseline | groupdiff-l | 1 |" in table
    assert "| l-uc4 | groupdiff-l | 4 | 0.1 | efficientnet | 50 |" in table
    assert "| first 20% |" in table and "| no layers |" in table
    assert [c["verdict"].split(" (")[0] for c in report["claims"]][2:] == ["not run", "not run"]
    assert "## The paper's claims" in table
    assert report["claims"][0]["compared"] == "fd_cls CFG: l-uc4 vs baseline"  # no FID in this run
    assert (out / "fid_vs_s_cross.png").stat().st_size > 1000
    capsys.readouterr()

    assert bench(setup, out, "--rows", "baseline", "l-uc4", "--seeds", "0", "1") == 0
    printed = capsys.readouterr().out
    assert printed.count("already in") == 2  # seed 0 of both rows skipped, seed 1 trained
    report = json.loads((out / "results.json").read_text())
    assert [(r["row"], r["seed"]) for r in report["runs"]][2:] == [("baseline", 1), ("l-uc4", 1)]
    assert report["ablations"] == ablation  # done once, on the first seed
    assert " ± " in (out / "table.md").read_text() and report["settings"]["seeds"] == [0, 1]
    assert (out / "table.md").read_text().count("`groupdiff bench quality") == 2  # both commands
    assert bench(setup, out, "--rows", "baseline", "l-uc4", "--seeds", "0", "1") == 0  # nothing left to do
    assert (out / "table.md").read_text().count("`groupdiff bench quality") == 2  # a repeated command listed once


def test_an_interrupted_row_resumes_its_training_and_scores_the_same(setup, capsys):
    out = setup / "interrupted"
    args = ["--rows", "l-uc4-query-class", "--ablation-samples", "0", "--set", "checkpoint_every=2"]
    assert bench(setup, out, *args) == 0
    first = json.loads((out / "results.json").read_text())["runs"][0]
    checkpoints = out / "l-uc4-query-class/seed-0/checkpoints"
    for path in (checkpoints / "step-0000003").iterdir():  # as if killed between steps 2 and 3
        path.unlink()
    (checkpoints / "step-0000003").rmdir()
    (checkpoints / "latest").write_text("step-0000002")
    (out / "results.json").unlink()
    capsys.readouterr()
    assert bench(setup, out, *args) == 0
    printed = capsys.readouterr()
    assert "resumed from" in printed.out + printed.err and "at step 2" in printed.out + printed.err
    again = json.loads((out / "results.json").read_text())["runs"][0]
    assert again["sweep"] == first["sweep"] and again["no_cfg"] == first["no_cfg"]  # exact resume, same samples


def test_sigterm_during_a_row_saves_it_and_exits_143_without_a_traceback(setup):
    out = setup / "sigterm"
    args = [*MICRO, "--steps", "100000", "--rows", "baseline", "--data", str(setup / "data"), "--out", str(out)]
    returncode, output = sigterm_once_logging(["bench", "quality", *args], out / "baseline/seed-0/log.jsonl")
    assert returncode == 143, output
    assert "groupdiff bench: stopped: " in output and "rerun to resume" in output and "Traceback" not in output
    assert (out / "baseline/seed-0/checkpoints/latest").is_file() and not (out / "results.json").exists()


def test_bad_rows_and_changed_settings_are_clear_errors(setup, tmp_path, capsys):
    assert bench(setup, tmp_path / "bad", "--rows", "baseline", "l-uc16") == 2
    err = capsys.readouterr().err
    assert "unknown quality row(s) ['l-uc16']" in err and "l-uc4-query-class" in err  # lists the valid names
    out = setup / "bench"  # written by the test above with --steps 3
    if (out / "results.json").is_file():
        assert bench(setup, out, "--rows", "baseline", "--steps", "4") == 2
        assert "other settings (steps)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="rows repeat"):
        check_rows(["baseline", "baseline"])


def test_every_row_changes_only_the_plan_so_compute_is_equal():
    assert check_rows(list(ROWS)) == list(ROWS)
    ROWS["cheater"] = ["plan.group_size=4", "steps=10"]
    try:
        with pytest.raises(ValueError, match="rows may change only the plan"):
            check_rows(["cheater"])
    finally:
        del ROWS["cheater"]


def test_generate_set_applies_a_sampling_schedule():
    config = model_config("DiT-T/4", input_size=8, in_channels=1, depth=2, num_classes=2, max_group_size=4)
    generator = Generator(randomize(GroupDiT(config)).eval(), lambda x: x.clamp(-1, 1), "pixel", "memory")
    common = dict(num_samples=8, group_size=4, steps=2, method="euler", progress=False,
                  guidance=Guidance(scale=1.0, mode="groupdiff-l"))  # groups only in the unconditional branch
    full = generate_set(generator, **common).samples
    assert torch.equal(full, generate_set(generator, **common, schedule=GroupAttentionSchedule()).samples)
    off = generate_set(generator, **common, schedule=GroupAttentionSchedule(layers=())).samples
    # euler at t = 1, 0.5: the window turns group attention on only in the second step
    late = generate_set(generator, **common, schedule=GroupAttentionSchedule(window=(0.0, 0.6))).samples
    assert not torch.allclose(full, off) and not torch.allclose(full, late) and not torch.allclose(off, late)
    assert layer_ranges(6) == {"no layers": (), "layers 0-2": (0, 1, 2), "layers 3-5": (3, 4, 5)}


def test_sets_drawn_with_different_seeds_share_no_chunk_noise():
    config = model_config("DiT-T/4", input_size=8, in_channels=1, depth=2, num_classes=2, max_group_size=4)
    generator = Generator(randomize(GroupDiT(config)).eval(), lambda x: x.clamp(-1, 1), "pixel", "memory")
    common = dict(num_samples=16, group_size=4, steps=1, method="euler", progress=False, batch_groups=1,
                  guidance=Guidance(scale=0.0, mode="groupdiff-l"))
    seed0, seed1 = generate_set(generator, **common, seed=0), generate_set(generator, **common, seed=1)
    assert seed0.seeds == [0, 1, 2, 3]  # seed 0's chunks keep the seeds they had before the stride
    assert not set(seed0.seeds) & set(seed1.seeds)
    first = seed0.samples.split(4)  # (4, C, H, W) per chunk
    assert not any(torch.allclose(a, b) for a in first for b in seed1.samples.split(4))
    with pytest.raises(ValueError, match="chunk index"):
        chunk_seed(0, -1)
    with pytest.raises(ValueError, match="evaluation seed"):
        chunk_seed(2**15, 0)


def test_spread_and_pearson():
    assert spread([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)))
    assert spread([2.0, None]) == (2.0, None) and spread([None]) == (None, None)
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx(0.9988, abs=1e-3)
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None


def scored(row: str, seed: int, fid: float, s_cross: float | None = None) -> dict:
    """A run record as `bench quality` writes it, with only the fields the claims read."""
    no_cfg = {"fid": fid + 5, "fd_classifier": fid / 10} | ({"s_cross": s_cross} if s_cross is not None else {})
    return {"row": row, "seed": seed, "best_scale": 1.0, "no_cfg": no_cfg, "cfg": {"fid": fid, "fd_classifier": 1.0}}


def test_the_claims_are_judged_from_the_rows_present_and_their_spread():
    report = {"runs": [scored("baseline", 0, 40.0), scored("l-uc4", 0, 30.0, 0.2)]}
    gain, ordering, query, correlation = claims(report)
    assert gain["verdict"] == "holds (one seed: spread unknown)"
    assert gain["measured"] == "40.00 → 30.00 (+25.0% lower); without CFG 45.00 → 35.00"
    assert ordering["verdict"].startswith("holds over the 2 rows run")
    assert query["verdict"].startswith("not run") and correlation["verdict"].startswith("not run")

    report = {"runs": [scored("baseline", s, f) for s, f in ((0, 40.0), (1, 44.0))]
              + [scored("l-uc4", s, f, x) for s, f, x in ((0, 39.0, 0.3), (1, 41.0, 0.3))]
              + [scored("l-uc4-query-class", 0, 39.5, 0.2), scored("l-uc4-query-class", 1, 41.5, 0.2)]
              + [scored("l-uc8", s, 45.0 + s, 0.1) for s in (0, 1)]}
    gain, ordering, query, correlation = claims(report)
    assert gain["verdict"] == "lower, but by less than 20% (within the seed spread)"
    # 42 -> 40 -> 45.5: N = 8 is worse; 1 -> 4 is closer than the two rows' spread
    assert ordering["verdict"] == "does not hold over the 3 rows run (within the seed spread)"
    assert query["verdict"] == "holds against the 1 other row run (within the seed spread)"  # 40 vs 40.5
    # ... but seed by seed class groups trail embedding groups by the same 0.5: the pairing shows it
    assert query["measured"].endswith("; l-uc4-query-class − l-uc4 by training seed: +0.50 ± 0.00 (+0.50 to +0.50; "
                                      "n = 2, 2/2 higher, sign test p = 0.50; exceeds spread)")
    assert gain["measured"].endswith("; l-uc4 − baseline by training seed: −2.00 ± 1.41 (−3.00 to −1.00; n = 2, "
                                     "2/2 lower, sign test p = 0.50; exceeds spread)")
    assert correlation["verdict"] == "holds" and correlation["measured"] == "r = -0.90 over 3 rows"
    table = claims_markdown(claims(report))
    assert table.count("\n| ") == 5 and "## The paper's claims" in table

    # rows run once borrow the spread of the rows run with several seeds (here l-uc4's: 34 and 36, std 1.41)
    report = {"runs": [scored("baseline", 0, 40.0), scored("l-uc4", 0, 34.0, 0.2), scored("l-uc4", 1, 36.0, 0.2),
                       scored("l-uc4-query-class", 0, 36.5, 0.3)]}
    gain, _, query, _ = claims(report)
    assert gain["verdict"] == "lower, but by less than 20% (beyond the seed spread, pooled over l-uc4: ± 1.41)"
    assert query["verdict"] == "holds against the 1 other row run (within the seed spread, pooled over l-uc4: ± 1.41)"


def test_the_gpu_script_asks_for_the_gpu_preset_on_cuda():
    """bench/gpu/quality.sh is not run here; its command line must parse into the gpu preset, all rows."""
    script = (Path(__file__).parents[2] / "bench/gpu/quality.sh").read_text()
    line = script[script.index("groupdiff bench quality"):].split("2>&1")[0]
    argv = shlex.split(line.replace("\\\n", " "))[1:]
    args = build_parser().parse_args(argv)
    assert args.device == "cuda" and quality_budget(args) == PRESETS["gpu"]
    gpu = PRESETS["gpu"]
    assert gpu.rows == tuple(ROWS) and gpu.fid_samples > 0 and 0.0 in gpu.scales
    per_row_images = gpu.steps * gpu.batch_size
    assert per_row_images * len(ROWS) / 2400 < 300  # training alone under 5 min at the H200's measured 2400 img/s


def test_budget_curve_grows_point_by_point_and_the_quality_baseline_reuses_its_checkpoint(setup, capsys):
    out = setup / "budget"
    curve = ["bench", "quality-budget", "--data", str(setup / "data"), "--classifier", str(setup / "classifier"),
             "--cache", str(setup / "cache"), "--out", str(out), "--batch-size", "32", "--fid-samples", "24",
             "--sample-steps", "2", "--reference-count", "40", "--ratio", "1000", "--points", "2", "4",
             *MICRO[MICRO.index("--set"):]]
    assert main(curve) == 0
    report = json.loads((out / "budget.json").read_text())
    assert report["floor"]["count"] == 24 and report["floor"]["fid"] > 0
    assert [p["steps"] for p in report["points"]] == [2]  # within 1000x the floor: no training past it
    assert report["chosen_steps"] == 2 and "Chosen budget: **2 steps** x batch 32" in (out / "budget.md").read_text()
    point = report["points"][0]
    assert point["images"] == 64 and point["fid"] > report["floor"]["fid"] and 0 <= point["accuracy"] <= 1
    capsys.readouterr()

    assert main([*curve, "--all-points"]) == 0
    printed = capsys.readouterr()
    assert "at step 2" in printed.out + printed.err  # the second point resumed the first point's run
    report = json.loads((out / "budget.json").read_text())
    assert [p["steps"] for p in report["points"]] == [2, 4] and report["chosen_steps"] == 2
    assert (out / "budget.png").stat().st_size > 1000

    # the quality benchmark's baseline row at a budget the curve passed without a checkpoint: refused
    assert bench(setup, out, "--rows", "baseline", "--steps", "3", "--ablation-samples", "0") == 2
    assert "past step 3" in capsys.readouterr().err
    # ... and at a point of the curve: its checkpoint is scored, nothing is trained
    assert bench(setup, out, "--rows", "baseline", "--steps", "4", "--ablation-samples", "0") == 0
    printed = capsys.readouterr()
    assert f"using {out}/baseline/seed-0/checkpoints/step-0000004" in printed.out
    row = json.loads((out / "results.json").read_text())["runs"][0]
    assert row["checkpoint"] == report["points"][1]["checkpoint"] and row["checkpoint_reused"]


def test_rows_trained_elsewhere_are_scored_from_their_ema_weights(setup, capsys):
    out = setup / "train-only"
    args = ["--rows", "l-uc4-query-random", "--ablation-samples", "0"]
    assert bench(setup, out, *args, "--train-only") == 0
    assert not (out / "results.json").exists()  # trained, not scored
    checkpoint = out / "l-uc4-query-random/seed-0/checkpoints/step-0000003"
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        (checkpoint / name).unlink()  # what comes back from a GPU run: config and EMA weights
    capsys.readouterr()
    (setup / "data").rename(setup / "data-away")  # scoring here needs no prepared data
    try:
        assert bench(setup, out, *args) == 0
    finally:
        (setup / "data-away").rename(setup / "data")
    assert f"using {checkpoint}" in capsys.readouterr().out
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["checkpoint_reused"] and run["train_seconds"] is None and run["checkpoint"] == str(checkpoint)
    # a checkpoint of another row's setup in a row's folder is refused, not scored
    other = out / "l-uc4-query-class/seed-0/checkpoints"
    other.mkdir(parents=True)
    (other / "step-0000003").symlink_to(checkpoint)
    assert bench(setup, out, "--rows", "l-uc4-query-class", "--ablation-samples", "0") == 2
    assert "different setup" in capsys.readouterr().err
