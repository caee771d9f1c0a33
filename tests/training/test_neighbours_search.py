"""Neighbour search against brute force, the tau threshold, faiss, virtual neighbours, storage."""

import pytest
import torch

from groupdiff.training.neighbours import (
    GroupNeighbours,
    Neighbours,
    exact_search,
    faiss_search,
    load_neighbours,
    neighbour_stats,
    save_neighbours,
    search,
)


def features(n=300, d=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, d, generator=generator)
    x = centres[torch.arange(n) % 5] + 0.5 * torch.randn(n, d, generator=generator)
    return torch.nn.functional.normalize(x, dim=1)


def brute_force(x, k):
    sims = x @ x.T
    sims.fill_diagonal_(-float("inf"))
    order = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :k]
    return order, sims.gather(1, order)


def test_exact_search_matches_brute_force_across_blocks():
    x = features()
    indices, sims = exact_search(x, k=7, block_size=64)  # several blocks, last one partial
    ref_indices, ref_sims = brute_force(x, 7)
    torch.testing.assert_close(sims, ref_sims)
    assert torch.equal(indices, ref_indices)
    assert (indices != torch.arange(len(x))[:, None]).all()  # self excluded
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # descending


def test_tau_selects_a_prefix():
    x = features()
    nb = search(x, k=20, tau=0.8, method="exact")
    counts = nb.counts_above_tau()
    assert counts.dtype == torch.int64 and counts.shape == (300,)
    ref_sims = brute_force(x, 20)[1]
    assert torch.equal(counts, (ref_sims >= 0.8).sum(1))
    for i in (0, 17, 299):
        assert torch.equal(nb.candidates(i), nb.indices[i, : counts[i]])
    assert 0 < counts.float().mean() < 20  # the threshold bites on this data


def test_duplicates_still_exclude_self():
    x = features(n=50)
    x[10] = x[11]  # identical pair: similarity 1 with each other
    for method in ("exact", "faiss-flat"):
        nb = search(x, k=5, method=method)
        assert nb.indices[10, 0] == 11 and nb.indices[11, 0] == 10, method
        assert (nb.indices != torch.arange(50)[:, None]).all(), method


def test_faiss_flat_agrees_with_exact():
    x = features(n=500, d=32, seed=3)
    exact = search(x, k=10, method="exact")
    flat = search(x, k=10, method="faiss-flat")
    torch.testing.assert_close(flat.similarities, exact.similarities, atol=1e-5, rtol=0)
    assert (flat.indices == exact.indices).float().mean() > 0.99  # only ties may swap


def test_faiss_ivf_with_all_lists_probed_is_exact():
    x = features(n=800, d=16, seed=4)
    indices, sims = faiss_search(x, k=10, index_type="ivf", nlist=8, nprobe=8)
    ref = search(x, k=10, method="exact")
    torch.testing.assert_close(sims, ref.similarities, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="flat"):
        faiss_search(x, k=3, index_type="hnsw")


def test_search_errors_and_k_cap():
    with pytest.raises(ValueError, match="method"):
        search(features(), method="annoy")
    with pytest.raises(ValueError, match="at least 2"):
        search(features(n=1))
    assert search(features(n=4), k=100).indices.shape == (4, 3)


def test_group_neighbours_are_virtual():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    nb = GroupNeighbours.of_groups(labels)
    assert nb.indices.shape == (6, 0) and nb.tau == 0.0
    assert nb.candidates(2).tolist() == [0, 5]
    assert nb.counts_above_tau().tolist() == [2, 1, 2, 0, 1, 2]
    everyone = GroupNeighbours.of_groups(torch.zeros(6, dtype=torch.int64))
    assert everyone.candidates(3).tolist() == [0, 1, 2, 4, 5]
    stats = neighbour_stats(nb, labels)
    assert stats["knn10_label_agreement"] == pytest.approx(5 / 6)  # item 3 has no candidate: counts 0
    stats = neighbour_stats(everyone, labels)
    assert stats["knn10_label_agreement"] == pytest.approx((2 / 5 * 3 + 1 / 5 * 2 + 0) / 6)


def test_stats_on_a_hand_made_index():
    nb = Neighbours(torch.tensor([[1, 2], [0, 2], [1, 0]]), torch.tensor([[0.9, 0.8], [0.9, 0.2], [0.8, 0.1]]), 0.5)
    stats = neighbour_stats(nb, torch.tensor([0, 0, 1]))
    assert stats["mean_candidates"] == pytest.approx(4 / 3)
    assert stats["share_at_least_1"] == 1.0 and stats["share_at_least_3"] == 0.0
    assert stats["knn10_label_agreement"] == pytest.approx(2 / 6)


def test_save_and_load_roundtrip(tmp_path):
    nb = search(features(n=40), k=6, tau=0.65)
    path = save_neighbours(tmp_path / "n" / "enc.safetensors", nb)
    back = load_neighbours(path)
    assert back.indices.dtype == torch.int64 and torch.equal(back.indices, nb.indices)
    assert torch.equal(back.similarities, nb.similarities) and back.tau == 0.65
    assert load_neighbours(path, tau=0.9).tau == 0.9
