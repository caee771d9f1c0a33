"""The paper's claims (Table 1, Fig. 5), each checked against the rows a quality report holds.

Rows are compared by FID *with CFG* at each row's chosen scale, as the paper's claims are: GroupDiff-l
uses group attention only in the unconditional branch, so without CFG its samples never see the group
(the no-CFG FID is reported beside it for the gain claim).

A verdict is only as strong as the runs behind it: a claim over rows that were not run says so, and a
difference smaller than the seed-to-seed spread (sample std of both rows, combined) is reported as
such rather than as a win. A row run with one seed borrows the spread pooled over the rows run with
several (training seeds are assumed to scatter alike in every row, and the verdict names the rows
the estimate comes from); with no such row the spread is unknown, and the verdict says that too.
Where two compared rows share two or more training seeds, the measured text adds their difference seed
by seed: a training seed can move every row the same way (initial weights, evaluation noise), which
the rows' own spreads count against the comparison and a paired difference does not.
"""

from __future__ import annotations

import math

from .paired import paired
from .quality_report import COLUMNS, correlation_points, pearson, summarize

PAPER_GAIN = 0.20  # issue 4's goal: GroupDiff-4 with embedding groups >= 20 % lower FID (paper: 20.9 % from scratch)
SIZE_ROWS = ["baseline", "l-uc2", "l-uc4", "l-uc8"]  # group size 1, 2, 4, 8, all with embedding groups
QUERY_ROWS = ["l-uc4", "l-uc4-query-class", "l-uc4-query-random"]
STRONG_CORRELATION = -0.5  # higher S_cross should go with lower FID
BySeed = dict[str, dict[int, float]]  # row -> {training seed: metric}


def claims(report: dict) -> list[dict]:
    """One entry per claim: ``claim``, ``compared`` (what is measured), ``measured`` (text), ``verdict``."""
    rows = {entry["row"]: entry for entry in summarize(report["runs"])}
    metric = "FID CFG" if all(entry["FID CFG"][0] is not None for entry in rows.values()) else "fd_cls CFG"
    pooled = pooled_spread(rows, metric)
    by_seed = _per_seed(report["runs"], metric)
    return [_gain(rows, metric, pooled, by_seed), _ordering(rows, metric, pooled),
            _query(rows, metric, pooled, by_seed), _correlation(report)]


def _per_seed(runs: list[dict], metric: str) -> BySeed:
    """row → {training seed: the metric of that run}, for the runs that measured it."""
    section, key = next((section, key) for title, section, key in COLUMNS if title == metric)
    table: BySeed = {}
    for run in runs:
        if (value := run[section].get(key)) is not None:
            table.setdefault(run["row"], {})[run["seed"]] = value
    return table


def _paired(by_seed: BySeed, first: str, second: str) -> str:
    """`second − first` paired by the training seeds both rows ran (`experiments.paired`), as text; '' below two
    shared seeds."""
    seeds = sorted(by_seed.get(first, {}).keys() & by_seed.get(second, {}).keys())
    if len(seeds) < 2:
        return ""
    comparison = paired({s: by_seed[second][s] for s in seeds}, {s: by_seed[first][s] for s in seeds})
    return f"; {second} − {first} by training seed: {comparison.describe(show_range=True, verdict=True)}"


def pooled_spread(rows: dict, metric: str) -> tuple[float, list[str]] | None:
    """The seed-to-seed std pooled over the rows with two or more seeds (weighted by degrees of freedom),
    and those rows; None when every row has one seed."""
    squares, freedom, names = 0.0, 0, []
    for name, entry in rows.items():
        std = entry[metric][1]
        if std is not None:
            count = len(entry["seeds"])
            squares += (count - 1) * std**2
            freedom += count - 1
            names.append(name)
    return (math.sqrt(squares / freedom), names) if freedom else None


def _gain(rows: dict, metric: str, pooled: tuple[float, list[str]] | None, by_seed: BySeed) -> dict:
    claim = {"claim": f"GroupDiff-4 (embedding groups) has >= {PAPER_GAIN:.0%} lower FID than the baseline",
             "compared": f"{metric}: l-uc4 vs baseline"}
    if not {"baseline", "l-uc4"} <= rows.keys():
        return {**claim, "measured": "–", "verdict": "not run"}
    base, group = rows["baseline"][metric], rows["l-uc4"][metric]
    gain = 1 - group[0] / base[0]
    measured = f"{_value(base)} → {_value(group)} ({gain:+.1%} lower)"
    unguided = metric.replace(" CFG", "")
    if rows["baseline"][unguided][0] is not None and rows["l-uc4"][unguided][0] is not None:
        measured += f"; without CFG {_value(rows['baseline'][unguided])} → {_value(rows['l-uc4'][unguided])}"
    measured += _paired(by_seed, "baseline", "l-uc4")
    if gain >= PAPER_GAIN:
        verdict = "holds"
    elif gain > 0:
        verdict = f"lower, but by less than {PAPER_GAIN:.0%}"
    else:
        verdict = "does not hold"
    return {**claim, "measured": measured, "verdict": _qualified(verdict, [base, group], pooled)}


def _ordering(rows: dict, metric: str, pooled: tuple[float, list[str]] | None) -> dict:
    present = [name for name in SIZE_ROWS if name in rows]
    claim = {"claim": "FID falls with group size 1 → 2 → 4 → 8",
             "compared": f"{metric}: " + ", ".join(present or SIZE_ROWS)}
    if len(present) < 2:
        return {**claim, "measured": "–", "verdict": f"not run ({len(present)} of {len(SIZE_ROWS)} rows)"}
    values = [rows[name][metric] for name in present]
    falling = all(later[0] < earlier[0] for earlier, later in zip(values, values[1:], strict=False))
    verdict = "holds" if falling else "does not hold"
    if len(present) < len(SIZE_ROWS):
        verdict += f" over the {len(present)} rows run"
    return {**claim, "measured": " → ".join(_value(v) for v in values), "verdict": _qualified(verdict, values, pooled)}


def _query(rows: dict, metric: str, pooled: tuple[float, list[str]] | None, by_seed: BySeed) -> dict:
    present = [name for name in QUERY_ROWS if name in rows]
    claim = {"claim": "similarity (embedding) groups beat class-based and random groups",
             "compared": f"{metric}: " + " vs ".join(present or QUERY_ROWS)}
    if "l-uc4" not in rows or len(present) < 2:
        return {**claim, "measured": "–", "verdict": f"not run ({len(present)} of {len(QUERY_ROWS)} rows)"}
    values = [rows[name][metric] for name in present]
    best = values[0][0] < min(v[0] for v in values[1:])
    verdict = "holds" if best else "does not hold"
    if len(present) < len(QUERY_ROWS):
        verdict += f" against the {len(present) - 1} other row run"
    measured = ", ".join(f"{name} {_value(v)}" for name, v in zip(present, values, strict=True))
    measured += "".join(_paired(by_seed, "l-uc4", name) for name in present[1:])
    return {**claim, "measured": measured, "verdict": _qualified(verdict, values, pooled)}


def _correlation(report: dict) -> dict:
    names, s_cross, quality, metric = correlation_points(report)
    claim = {"claim": "the cross-sample attention score S_cross tracks FID (higher S_cross, lower FID)",
             "compared": f"Pearson r of {metric} against S_cross over rows with N > 2"}
    r = pearson(s_cross, quality)
    if r is None:
        return {**claim, "measured": f"{len(names)} rows", "verdict": "not run (needs 3 rows with N > 2)"}
    verdict = "holds" if r <= STRONG_CORRELATION else ("weak" if r < 0 else "does not hold")
    return {**claim, "measured": f"r = {r:.2f} over {len(names)} rows", "verdict": verdict}


def _value(value: tuple[float | None, float | None]) -> str:
    mean, std = value
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _qualified(verdict: str, values: list[tuple[float, float | None]], pooled: tuple[float, list[str]] | None) -> str:
    """The verdict, flagged when the rows are closer than their seed spread or the spread is unknown."""
    borrowed = any(std is None for _, std in values)
    if borrowed and pooled is None:
        return f"{verdict} (one seed: spread unknown)"
    stds = [pooled[0] if std is None else std for _, std in values]
    source = f", pooled over {', '.join(pooled[1])}: ± {pooled[0]:.2f}" if borrowed else ""
    # neighbours in the order the claim compares them
    close = any(abs(a[0] - b[0]) < math.hypot(sa, sb)
                for a, b, sa, sb in zip(values, values[1:], stds, stds[1:], strict=False))
    if close:
        return f"{verdict} (within the seed spread{source})"
    return f"{verdict} (beyond the seed spread{source})" if borrowed else verdict


def claims_markdown(checked: list[dict]) -> str:
    lines = ["", "## The paper's claims", "", "| claim | compared | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['compared']} | {c['measured']} | {c['verdict']} |" for c in checked]
    return "\n".join(lines) + "\n"
