"""Fréchet distance, k-NN precision/recall and group diversity on synthetic features with known answers."""

import math

import numpy as np
import pytest

from groupdiff.evaluation.diversity import group_diversity
from groupdiff.evaluation.frechet import frechet_distance, frechet_distance_of, gaussian_stats
from groupdiff.evaluation.precision_recall import precision_recall


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    dim = 6
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    a, b = rng.uniform(0.2, 3.0, dim), rng.uniform(0.2, 3.0, dim)
    # commuting (diagonal) covariances: FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # a shared rotation makes the covariances full and non-diagonal but cannot change the distance
    q = random_rotation(dim, rng)
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)
    # non-commuting covariances in 2-D: tr sqrt(S1 S2) via the 2x2 identity sqrt(det) route
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
    product = s1 @ s2
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    closed = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(closed, rel=1e-9)


def test_frechet_distance_of_samples_is_zero_against_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 8))
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-9)
    shifted = frechet_distance_of(x, rng.normal(size=(4000, 8)) + 1.0)  # expected 8 * 1^2 plus sampling noise
    assert 7.0 < shifted < 9.0
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(x[:1])
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_precision_recall_separate_fidelity_from_coverage():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(500, 4))
    same = rng.normal(size=(500, 4))
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    # collapsed generator: every sample near the mode is realistic (precision high) but covers little (recall low)
    collapsed = rng.normal(size=(500, 4)) * 0.1
    p, r = precision_recall(real, collapsed)
    assert p > 0.95 and r < 0.2
    # far-away samples are neither realistic nor covering
    p, r = precision_recall(real, same + 10.0)
    assert p == 0.0 and r == 0.0
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(real[:3], same)


def test_group_diversity_is_near_zero_for_duplicates_and_near_one_for_independent_members():
    rng = np.random.default_rng(3)
    groups, size, dim = 40, 4, 16
    labels = np.repeat(np.arange(groups) % 10, size)
    independent = rng.normal(size=(groups * size, dim))
    result = group_diversity(independent, size, labels)
    assert 0.9 < result["ratio"] < 1.1
    # each group: one random image repeated with tiny noise
    centres = rng.normal(size=(groups, dim))
    duplicates = np.repeat(centres, size, axis=0) + rng.normal(size=(groups * size, dim)) * 1e-3
    result = group_diversity(duplicates, size, labels)
    assert result["ratio"] < 0.01 and result["across"] > 1.0
    # one group per class: nothing of the same class to compare with
    lonely = group_diversity(independent[:8], size, np.repeat([0, 1], size))
    assert math.isnan(lonely["across"]) and math.isnan(lonely["ratio"])
    with pytest.raises(ValueError, match="whole groups"):
        group_diversity(independent[:7], size)
    with pytest.raises(ValueError, match="at least 2"):
        group_diversity(independent, 1)
