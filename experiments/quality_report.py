"""Turn the quality benchmark's results.json into its markdown table and its FID-vs-S_cross plot.

Each (row, seed) run is one record; the table shows the mean over seeds and, with two or more seeds,
the sample standard deviation, so a difference smaller than the seed-to-seed spread is visible as such.
Comparisons between rows (each row against the baseline, each other grouped row against ``l-uc4``) are
paired by training seed with `experiments.paired`: mean ± std of the per-seed differences, n, sign test.

``python -m groupdiff.experiments.quality_report DIR`` rewrites DIR/table.md from DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from groupdiff.clients.reporting import new_figure, save_figure

from .paired import paired
from .quality_rows import row_settings

# (column title, section of a run record, metric key)
COLUMNS = [
    ("FID", "no_cfg", "fid"), ("FID CFG", "cfg", "fid"), ("fd_cls", "no_cfg", "fd_classifier"),
    ("fd_cls CFG", "cfg", "fd_classifier"), ("prec CFG", "cfg", "precision"), ("rec CFG", "cfg", "recall"),
    ("acc CFG", "cfg", "accuracy"), ("div ratio", "no_cfg", "diversity_ratio"), ("S_cross", "no_cfg", "s_cross"),
]

# the comparison table: each row minus each reference row present, on the training seeds both ran
REFERENCES = ("baseline", "l-uc4")
PAIRED_COLUMNS = {"FID CFG": 2, "FID": 2, "fd_cls CFG": 2, "acc CFG": 3}  # column title -> digits


def spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample std) of the defined values; std is None below two values, both None with none."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None, None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else None


def summarize(runs: list[dict]) -> list[dict]:
    """One entry per row, in first-run order: seeds, best scales, and (mean, std) of every column."""
    order = list(dict.fromkeys(run["row"] for run in runs))
    summary = []
    for row in order:
        mine = [run for run in runs if run["row"] == row]
        entry = {"row": row, "seeds": [run["seed"] for run in mine], "best_scales": [run["best_scale"] for run in mine]}
        for title, section, key in COLUMNS:
            entry[title] = spread([run[section].get(key) for run in mine])
        summary.append(entry)
    return summary


def _cell(value: tuple[float | None, float | None]) -> str:
    mean, std = value
    if mean is None:
        return "–"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def markdown_table(report: dict) -> str:
    summary = summarize(report["runs"])
    head = ["row", "mode", "N", "share", "query", "noise", "seeds", "best s"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in summary:
        plan = row_settings(entry["row"])
        cells = [entry["row"], plan.get("plan.mode", "–"), plan.get("plan.group_size", "–"),
                 plan.get("plan.group_share", "–") if plan.get("plan.mode") != "groupdiff-f" else "1.0",
                 plan.get("plan.query", "–") if plan.get("plan.group_size") != "1" else "–",
                 plan.get("plan.noise_variation", "–"), " ".join(map(str, entry["seeds"])),
                 " ".join(f"{s:g}" for s in entry["best_scales"])] + [_cell(entry[c[0]]) for c in COLUMNS]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    settings = report["settings"]
    notes = [
        "", "Commands (the first made results.json, each later one added rows or seeds): "
        + "; ".join(f"`{c}`" for c in report.get("commands", [report["command"]])), "",
        f"Training: {settings['steps']} steps x batch {settings['batch_size']} for every row "
        f"of `{settings['recipe']}` (model overrides: {settings['model_overrides'] or 'none'}; fixed overrides: "
        f"{list(settings['extra']) or 'none'}); training seeds {list(settings['seeds'])}.",
        f"Sampling: {settings['sampler']}, {settings['sample_steps']} steps, seed {settings['eval_seed']}; guidance "
        f"sweep {list(settings['scales'])} "
        f"on {settings['num_samples']} samples, best nonzero scale by fd_classifier; FID / precision / recall "
        f"on {settings['fid_samples']} samples against {settings['reference_count']} test images "
        "(FID is biased upward at small N: compare rows, not papers).",
        "Columns: `CFG` = at the chosen scale `best s`; fd_cls = Fréchet distance on the project classifier's "
        "features (not FID); div ratio = within-group / across-group feature distance; mean ± sample std over seeds.",
    ]
    notes += paired_table(report["runs"])
    names, s_cross, quality, metric = correlation_points(report)
    r = pearson(s_cross, quality)
    notes += ["", f"Fig. 5 analogue (`fid_vs_s_cross.png`): Pearson r between per-row mean {metric} (best scale) "
              f"and S_cross = {'n/a' if r is None else f'{r:.2f}'} over {len(names)} rows with groups of more than 2 "
              "(at N = 2 S_cross is 0 by definition)."]
    ablation = report.get("ablations")
    if ablation:
        notes += ["", f"## Sampling-time ablations on `{ablation['row']}` (seed {ablation['seed']}, scale "
                  f"{ablation['scale']:g}, {ablation['num_samples']} samples)", "",
                  "| group attention | fd_cls | acc | div ratio |", "|---|---|---|---|"]
        for table in ("windows", "layers"):
            for name, m in ablation[table].items():
                cells = [_cell((m.get(key), None)) for key in ("fd_classifier", "accuracy", "diversity_ratio")]
                notes.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + notes) + "\n"


def by_seed(runs: list[dict], title: str) -> dict[str, dict[int, float]]:
    """row -> {training seed: the column's value}, for the runs where it is defined."""
    section, key = next((section, key) for name, section, key in COLUMNS if name == title)
    table: dict[str, dict[int, float]] = {}
    for run in runs:
        value = run[section].get(key)
        if value is not None and not math.isnan(value):
            table.setdefault(run["row"], {})[run["seed"]] = value
    return table


def comparisons(runs: list[dict]) -> list[dict]:
    """Each row against each reference row (``REFERENCES``) it does not precede there: per column of
    ``PAIRED_COLUMNS``, the `paired` summary of row − reference over the training seeds both ran."""
    rows = list(dict.fromkeys(run["row"] for run in runs))
    values = {title: by_seed(runs, title) for title in PAIRED_COLUMNS}
    out = []
    for reference in (r for r in REFERENCES if r in rows):
        for row in rows:
            if row in REFERENCES[: REFERENCES.index(reference) + 1]:
                continue
            entry = {"row": row, "reference": reference}
            for title, table in values.items():
                mine, theirs = table.get(row, {}), table.get(reference, {})
                shared = sorted(mine.keys() & theirs.keys())
                if shared:
                    entry[title] = paired({s: mine[s] for s in shared}, {s: theirs[s] for s in shared})
            if len(entry) > 2:
                out.append(entry)
    return out


def paired_table(runs: list[dict]) -> list[str]:
    """The comparison section of table.md (no lines when no two rows share a training seed)."""
    entries = comparisons(runs)
    if not entries:
        return []
    lines = ["", "## Rows compared, paired by training seed", "",
             "Row minus reference on the training seeds both ran (same sampling noise): mean ± sample std of the "
             "per-seed differences (range; n, how many seeds point the mean's way, exact two-sided sign test; "
             "exceeds spread: |mean| > std). n = 1 is one training seed: its spread is unknown.", "",
             "| row | − reference | " + " | ".join(f"Δ{title}" for title in PAIRED_COLUMNS) + " |",
             "|" + "---|" * (2 + len(PAIRED_COLUMNS))]
    for entry in entries:
        cells = [entry[title].describe(digits, show_range=True, verdict=True) if title in entry else "–"
                 for title, digits in PAIRED_COLUMNS.items()]
        lines.append(f"| {entry['row']} | {entry['reference']} | " + " | ".join(cells) + " |")
    return lines


def correlation_points(report: dict) -> tuple[list[str], list[float], list[float], str]:
    """Per-row means of (S_cross, FID with CFG at the row's best scale, as in the paper's Fig. 5), falling
    back to fd_classifier when no FID was run.

    Rows with groups of 2 are left out: with one neighbour P_max = P_mean, so S_cross is 0 by definition
    (paper Eq. 8) and says nothing about how focused the attention is."""
    summary = [e for e in summarize(report["runs"])
               if e["S_cross"][0] is not None and int(row_settings(e["row"])["plan.group_size"]) > 2]
    metric = "FID CFG" if all(e["FID CFG"][0] is not None for e in summary) else "fd_cls CFG"
    return ([e["row"] for e in summary], [e["S_cross"][0] for e in summary], [e[metric][0] for e in summary],
            metric)


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson r, or None with fewer than three points or a constant coordinate."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def plot(report: dict, path: Path) -> float | None:
    """The Fig. 5 analogue: one point per GroupDiff row (mean over seeds); returns Pearson r."""
    names, s_cross, quality, metric = correlation_points(report)
    r = pearson(s_cross, quality)
    figure, axes = new_figure(figsize=(6, 4.5))
    axes.scatter(s_cross, quality)
    for name, x, y in zip(names, s_cross, quality, strict=True):
        axes.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    label = "FID (CFG, best scale)" if metric == "FID CFG" else "fd_classifier (CFG, best scale; no FID in this run)"
    axes.set(xlabel="S_cross (mean over layers and times)", ylabel=label,
             title=f"{label.split(' (')[0]} vs S_cross: Pearson r = {'n/a' if r is None else f'{r:.2f}'} "
                   f"({len(names)} rows)")
    save_figure(figure, path)
    return r


def rewrite_table(folder: Path) -> None:
    """Rewrite ``folder/table.md`` from ``folder/results.json`` as `quality.run` ends (table, then the claims,
    rechecked), keeping any text written by hand under the generated tables."""
    from .distill_report import hand_written_tail
    from .quality_claims import claims, claims_markdown  # it imports this module

    report = json.loads((folder / "results.json").read_text())
    table = folder / "table.md"
    text = markdown_table(report) + claims_markdown(claims(report))
    if table.is_file():
        text += hand_written_tail(table.read_text())
    table.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupdiff.experiments.quality_report",
                                     description="Rewrite table.md from results.json in each folder.")
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding a quality bench results.json")
    for folder in parser.parse_args(argv).folders:
        rewrite_table(folder)
        print(f"{folder / 'table.md'}: rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
