"""Paired per-seed comparisons: mean difference ± spread, n, and an exact sign test, in one line.

Every comparison table of the experiments (a row against the baseline over training seeds, a group
student against the size-1 student over evaluation seeds) takes its difference cells from here, so they
all read alike. ``paired(a, b)`` pairs ``a`` and ``b`` seed by seed and summarizes ``a − b``:

    >>> paired({0: 31.0, 1: 32.0}, {0: 34.0, 1: 34.5}).describe()
    '−2.75 ± 0.35 (n = 2, 2/2 lower, sign test p = 0.50)'

- spread: the sample standard deviation of the per-seed differences (``None`` below two pairs) and
  their range ``low``..``high``;
- sign test: exact two-sided binomial test of "a is as often below b as above it", ties dropped
  (``p = min(1, 2·P[X ≤ min(lower, higher)])`` with ``X ~ Binomial(lower + higher, 1/2)``). Its
  smallest possible p is 2 / 2ⁿ: 0.50 at n = 2, 0.25 at n = 3, 0.0625 at n = 5 — a few seeds can
  never make it significant, and the line says so by showing p;
- ``exceeds_spread``: ``|mean| > std``, the mean difference larger than the seed-to-seed scatter of the
  difference itself (False below two pairs, where that scatter is unknown). It is a reading aid, not a
  test: at n = 2 it only says the two differences agree in sign and roughly in size.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MINUS = "\u2212"  # the typographic minus the notes use


@dataclass(frozen=True)
class Paired:
    """``a − b`` seed by seed. ``seeds`` is None when the inputs were plain sequences."""

    differences: tuple[float, ...]
    seeds: tuple | None = None

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1) of the differences; None below two pairs."""
        return statistics.stdev(self.differences) if self.n > 1 else None

    @property
    def low(self) -> float:
        return min(self.differences)

    @property
    def high(self) -> float:
        return max(self.differences)

    @property
    def lower(self) -> int:
        """Pairs where ``a`` is below ``b``."""
        return sum(d < 0 for d in self.differences)

    @property
    def higher(self) -> int:
        return sum(d > 0 for d in self.differences)

    @property
    def ties(self) -> int:
        return self.n - self.lower - self.higher

    @property
    def p(self) -> float:
        """Exact two-sided sign test, ties dropped; 1.0 when every pair ties."""
        return sign_test(self.lower, self.higher)

    @property
    def exceeds_spread(self) -> bool:
        """|mean| > sample std of the differences (False below two pairs: the spread is unknown)."""
        return self.std is not None and abs(self.mean) > self.std

    def describe(self, digits: int = 2, show_range: bool = False, verdict: bool = False) -> str:
        """One line, e.g. ``−2.95 ± 0.26 (n = 2, 2/2 lower, sign test p = 0.50)``; ``show_range`` adds the
        per-seed range (``−3.14 to −2.77; n = 2, ...``), ``verdict`` whether ``|mean|`` exceeds the std
        (``..., p = 0.50; exceeds spread`` or ``; within spread``; nothing below two pairs)."""
        value = _number(self.mean, digits) + ("" if self.std is None else f" ± {self.std:.{digits}f}")
        parts = [f"n = {self.n}"]
        if self.n == 1:
            parts.append("one pair: spread unknown")
        elif self.mean < 0:
            parts.append(f"{self.lower}/{self.n} lower")
        elif self.mean > 0:
            parts.append(f"{self.higher}/{self.n} higher")
        else:
            parts.append(f"{self.lower} lower, {self.higher} higher of {self.n}")
        if self.ties and self.mean != 0:
            parts.append(f"{self.ties} tied")
        parts.append(f"sign test p = {self.p:.2f}")
        spread = f"{_number(self.low, digits)} to {_number(self.high, digits)}; " if show_range and self.n > 1 else ""
        called = ""
        if verdict and self.std is not None:
            called = "; exceeds spread" if self.exceeds_spread else "; within spread"
        return f"{value} ({spread}{', '.join(parts)}{called})"

    def as_dict(self) -> dict:
        """Everything above as plain JSON-ready values."""
        return {"differences": list(self.differences), "seeds": None if self.seeds is None else list(self.seeds),
                "n": self.n, "mean": self.mean, "std": self.std, "low": self.low, "high": self.high,
                "lower": self.lower, "higher": self.higher, "ties": self.ties, "sign_test_p": self.p,
                "exceeds_spread": self.exceeds_spread}


def paired(a: Mapping | Sequence[float], b: Mapping | Sequence[float]) -> Paired:
    """Pair ``a`` and ``b`` (both dicts seed -> value with the same seeds, or equal-length sequences in
    seed order) and summarize ``a − b``. Refuses unmatched seeds, empty inputs and undefined values."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("paired: give both sides as dicts (seed -> value) or both as sequences")
    if isinstance(a, Mapping):
        if a.keys() != b.keys():
            only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
            raise ValueError(f"paired: the two sides have different seeds (only in the first: {only_a}; "
                             f"only in the second: {only_b}); pair only seeds both ran")
        seeds = tuple(sorted(a))
        first, second = [a[s] for s in seeds], [b[s] for s in seeds]
    else:
        if len(a) != len(b):
            raise ValueError(f"paired: {len(a)} values against {len(b)}; the sides must be paired seed by seed")
        seeds, first, second = None, list(a), list(b)
    if not first:
        raise ValueError("paired: no pairs")
    for value in (*first, *second):
        if value is None or math.isnan(value):
            raise ValueError("paired: an undefined value (None or NaN); leave that seed out of both sides")
    return Paired(tuple(float(x) - float(y) for x, y in zip(first, second, strict=True)), seeds)


def sign_test(lower: int, higher: int) -> float:
    """Exact two-sided binomial sign test of ``lower`` against ``higher`` counts (p = 1/2 under the null)."""
    total = lower + higher
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(min(lower, higher) + 1)) / 2**total
    return min(1.0, 2 * tail)


def _number(value: float, digits: int) -> str:
    text = f"{value:+.{digits}f}"
    if float(text) == 0:
        return f"{0:.{digits}f}"
    return text.replace("-", MINUS)


def describe(a: Mapping | Sequence[float], b: Mapping | Sequence[float], **options) -> str:
    """``paired(a, b).describe(**options)``: the one-liner for a table cell or a sentence."""
    return paired(a, b).describe(**options)
