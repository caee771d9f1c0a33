"""Cosine top-k neighbours with a similarity threshold τ: the candidate pool for group batches.

The paper (§3.2) groups an anchor with images whose CLIP-L similarity is at least 0.7; the
released code takes FAISS top-100 with no threshold. We keep both knobs: the top-k list is stored
once, and τ is applied when candidates are read, so τ can change without recomputing anything.

Search runs as an exact blocked matmul in torch up to ``EXACT_LIMIT`` items and through faiss
(flat inner product, or IVF for very large sets) beyond, behind one function, `search`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

EXACT_LIMIT = 100_000  # above this, exact search costs more than an approximate faiss IVF index
SEARCH_METHODS = ("auto", "exact", "faiss-flat", "faiss-ivf")


@dataclass
class Neighbours:
    """Top-k neighbours of every item, most similar first, the item itself excluded.

    ``indices`` (N, k) int64 and ``similarities`` (N, k) float32 (cosine, descending); an item's
    candidates are its neighbours with similarity >= ``tau`` (a prefix of its row)."""

    indices: torch.Tensor
    similarities: torch.Tensor
    tau: float

    def candidates(self, i: int) -> torch.Tensor:
        """Neighbour ids of item ``i`` with similarity >= tau, most similar first."""
        return self.indices[i][self.similarities[i] >= self.tau]

    def counts_above_tau(self) -> torch.Tensor:
        """(N,) int64: how many candidates each item has."""
        return (self.similarities >= self.tau).sum(dim=1)


@dataclass
class GroupNeighbours(Neighbours):
    """Virtual neighbours for ``class`` and ``random`` queries: every other item of the same group
    (same class, or the whole set) is a candidate with similarity 1.0, and tau is 0.

    Nothing N x N is stored: ``indices`` and ``similarities`` are empty (N, 0) tensors and
    `candidates` returns the other members of the item's group in ascending id order. All of them
    are equally similar, so a consumer should draw from the list at random, not take its head."""

    groups: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # (N,) group id

    def __post_init__(self) -> None:
        order = torch.argsort(self.groups, stable=True)  # item ids sorted by group, ascending within it
        self._members = torch.split(order, torch.bincount(self.groups).tolist())

    @classmethod
    def of_groups(cls, groups: torch.Tensor) -> GroupNeighbours:
        n = len(groups)
        empty = torch.zeros(n, 0, dtype=torch.int64), torch.zeros(n, 0, dtype=torch.float32)
        return cls(*empty, tau=0.0, groups=groups.to(torch.int64))

    def candidates(self, i: int) -> torch.Tensor:
        members = self._members[int(self.groups[i])]
        return members[members != i]

    def counts_above_tau(self) -> torch.Tensor:
        return torch.bincount(self.groups)[self.groups] - 1


def _keep_k_without_self(ids: torch.Tensor, sims: torch.Tensor, rows: torch.Tensor, k: int):
    """Drop each row's own id from a (B, k+1) result (or the last entry where self is absent)."""
    is_self = ids == rows[:, None]
    order = torch.argsort(is_self.to(torch.int8), dim=1, stable=True)[:, :k]  # non-self first, order kept
    return ids.gather(1, order), sims.gather(1, order)


def exact_search(features: torch.Tensor, k: int, block_size: int = 2048, desc: str = "search"):
    """Exact cosine top-k of L2-normalised ``features`` (N, D) by blocked matmul.

    Returns ``(indices (N, k) int64, similarities (N, k) float32)``, self excluded."""
    n = len(features)
    features = features.float()
    indices = torch.empty(n, k, dtype=torch.int64)
    similarities = torch.empty(n, k, dtype=torch.float32)
    for start in tqdm(range(0, n, block_size), desc=desc, unit="block", dynamic_ncols=True):
        rows = torch.arange(start, min(start + block_size, n))
        sims = features[rows] @ features.T  # (B, N)
        sims[torch.arange(len(rows)), rows] = -math.inf  # self excluded
        top = sims.topk(k, dim=1)
        indices[rows], similarities[rows] = top.indices, top.values
    return indices, similarities


def faiss_search(features: torch.Tensor, k: int, index_type: str = "flat", nlist: int | None = None,
                 nprobe: int = 10, block_size: int = 8192, seed: int = 0, desc: str = "search"):
    """Cosine top-k through a faiss inner-product index: ``flat`` (exact) or ``ivf`` (approximate,
    ``nlist`` clusters, ``nprobe`` probed per query). Same return as `exact_search`."""
    import faiss

    x = np.ascontiguousarray(features.float().numpy())  # (N, D) float32
    n, dim = x.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).permutation(n)[: 256 * nlist]
        index.train(x[np.sort(sample)])
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"faiss index type must be 'flat' or 'ivf', got {index_type!r}")
    index.add(x)
    indices = torch.empty(n, k, dtype=torch.int64)
    similarities = torch.empty(n, k, dtype=torch.float32)
    for start in tqdm(range(0, n, block_size), desc=desc, unit="block", dynamic_ncols=True):
        rows = torch.arange(start, min(start + block_size, n))
        sims, ids = index.search(x[start : start + len(rows)], k + 1)  # (B, k+1); self usually first
        ids, sims = _keep_k_without_self(torch.from_numpy(ids), torch.from_numpy(sims), rows, k)
        indices[rows], similarities[rows] = ids, sims
    return indices, similarities


def search(features: torch.Tensor, k: int = 100, tau: float = 0.7, method: str = "auto",
           nlist: int | None = None, nprobe: int = 10, desc: str = "search") -> Neighbours:
    """Top-k cosine neighbours of L2-normalised features (N, D); ``auto`` is exact up to
    ``EXACT_LIMIT`` items and faiss IVF beyond. k is capped at N - 1."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"search method must be one of {list(SEARCH_METHODS)}, got {method!r}")
    n = len(features)
    if n < 2:
        raise ValueError(f"neighbour search needs at least 2 items, got {n}")
    k = min(k, n - 1)
    if method == "auto":
        method = "exact" if n <= EXACT_LIMIT else "faiss-ivf"
    if method == "exact":
        indices, similarities = exact_search(features, k, desc=desc)
    else:
        indices, similarities = faiss_search(features, k, method.removeprefix("faiss-"), nlist, nprobe, desc=desc)
    return Neighbours(indices, similarities, tau)


def neighbour_stats(neighbours: Neighbours, labels: torch.Tensor) -> dict[str, float]:
    """Mean number of candidates (>= tau), share of items with at least 1 / 3 / 7 (a group of 2 / 4 /
    8 is possible), and the 10-NN label agreement (for virtual neighbours: the expected share of
    candidates with the anchor's label)."""
    counts = neighbours.counts_above_tau().double()
    stats = {
        "tau": neighbours.tau,
        "mean_candidates": counts.mean().item(),
        **{f"share_at_least_{m}": (counts >= m).float().mean().item() for m in (1, 3, 7)},
    }
    if isinstance(neighbours, GroupNeighbours):
        groups, classes = neighbours.groups, int(labels.max()) + 1
        joint = torch.bincount(groups * classes + labels, minlength=(int(groups.max()) + 1) * classes)
        same = joint[groups * classes + labels] - 1  # other members of my group with my label
        stats["knn10_label_agreement"] = (same.float() / counts.clamp(min=1)).mean().item()
    else:
        stats["k"] = neighbours.indices.shape[1]
        top = neighbours.indices[:, :10]
        stats["knn10_label_agreement"] = (labels[top] == labels[:, None]).float().mean().item()
        stats["mean_top1_similarity"] = neighbours.similarities[:, 0].mean().item()
        stats["mean_top10_similarity"] = neighbours.similarities[:, :10].mean().item()
    return stats


def save_neighbours(path: str | Path, neighbours: Neighbours) -> Path:
    """safetensors with int32 indices (int64 beyond 2^31 items) and float32 similarities; tau in metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = len(neighbours.indices) < 2**31
    tensors = {"indices": neighbours.indices.to(torch.int32 if small else torch.int64).contiguous(),
               "similarities": neighbours.similarities.float().contiguous()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"tau": str(neighbours.tau)})
    tmp.replace(path)
    return path


def load_neighbours(path: str | Path, tau: float | None = None) -> Neighbours:
    """Read `save_neighbours` output; ``tau`` overrides the stored threshold."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        stored_tau = float(f.metadata()["tau"])
    tensors = load_file(str(path))
    return Neighbours(tensors["indices"].to(torch.int64), tensors["similarities"], stored_tau if tau is None else tau)


def neighbour_figure(path: str | Path, dataset: Dataset, neighbours: Neighbours, queries: int = 8,
                     columns: int = 8, seed: int = 0) -> Path:
    """The paper's Fig. 4 for one encoder: each row a random query image, then its top ``columns``
    neighbours; neighbours below tau are faded towards white (they would not join a group)."""
    from groupdiff.model.images import group_grid

    from .data import to_model_range

    generator = torch.Generator().manual_seed(seed)
    query_ids = torch.randperm(len(dataset), generator=generator)[:queries].tolist()
    blank = torch.ones(dataset[0][0].shape)  # white in [-1, 1]
    rows = []
    for q in query_ids:
        rows.append(to_model_range(dataset[q][0]))
        if isinstance(neighbours, GroupNeighbours):  # equally similar: show a random draw
            pool = neighbours.candidates(q)
            ids, strong = pool[torch.randperm(len(pool), generator=generator)[:columns]], [True] * columns
        else:
            ids = neighbours.indices[q, :columns]
            strong = (neighbours.similarities[q, :columns] >= neighbours.tau).tolist()
        for column in range(columns):
            if column >= len(ids):
                rows.append(blank)
                continue
            image = to_model_range(dataset[int(ids[column])][0])
            rows.append(image if strong[column] else 0.3 * image + 0.7)
    grid = group_grid(torch.stack(rows), group_size=columns + 1, upscale=2 if blank.shape[-1] < 64 else 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path

