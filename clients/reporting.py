"""Shared output of benchmarks and load tests: a plain-text table on stdout and a JSON file with the environment.

It lives with the clients (the lowest layer that writes reports) so that `groupdiff loadtest` writes the same
report as `groupdiff bench` without torch or numpy: the machine record names torch only when the caller
already imported it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    record = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        record.update(torch_threads=torch.get_num_threads(), torch=torch.__version__,
                      gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    return record


def json_ready(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, NaN (an undefined metric) to null."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # a numpy scalar, without importing numpy
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write_report(path: str | os.PathLike, name: str, command: str, rows: list[dict], settings: dict,
                 extra: dict | None = None) -> Path:
    """``extra``: further top-level sections (summaries derived from the rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": name,
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings,
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def new_figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on matplotlib's file-only Agg backend: benchmarks run on headless machines, and
    matplotlib is imported only by a benchmark that draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(figure: Any, path: Path) -> Path:
    """Write a `new_figure` figure as PNG (creating its folder) and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def counter_totals(exposition: str) -> dict[tuple[str, str], float]:
    """``{(name, labels), value}`` of every sample in a Prometheus text exposition (``labels`` as written between
    the braces, "" when none). Standard library only, so `groupdiff loadtest` reads a server's /metrics without
    prometheus-client."""
    totals = {}
    for line in exposition.splitlines():
        match = re.match(r"^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)", line)
        if match:
            totals[match[1], match[2] or ""] = float(match[3])
    return totals


def serving_figures(before: str, after: str) -> dict[str, float | None]:
    """What a server's /metrics say about the traffic between two scrapes: the share of images (real group members)
    in full groups (``groupdiff_group_members_total``) and the prompt cache's hit rate, lookups and evictions
    (``groupdiff_prompt_cache_*``). A share with nothing to count is None (a class model has no cache lookups)."""
    first, second = counter_totals(before), counter_totals(after)

    def delta(name: str, labels: str = "") -> float:
        return second.get((name, labels), 0.0) - first.get((name, labels), 0.0)

    full = delta("groupdiff_group_members_total", 'fill="full"')
    partial = delta("groupdiff_group_members_total", 'fill="partial"')
    hits = delta("groupdiff_prompt_cache_lookups_total", 'result="hit"')
    misses = delta("groupdiff_prompt_cache_lookups_total", 'result="miss"')
    return {"full_group_share": full / (full + partial) if full + partial else None,
            "group_members": full + partial,
            "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
            "cache_lookups": hits + misses,
            "cache_evictions": delta("groupdiff_prompt_cache_evictions_total")}
