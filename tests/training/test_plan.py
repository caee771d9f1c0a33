"""Group batch plan: group statistics, neighbours above tau, DDP shards, reproducibility, errors."""

import numpy as np
import pytest
import torch

from groupdiff.training.plan import GroupBatchPlan, PlanConfig, group_timesteps


class SimilarityTable:
    """Neighbours above tau from an explicit cosine-similarity matrix of clustered features."""

    def __init__(self, features: torch.Tensor, tau: float, k: int):
        self.tau = tau
        sims = features @ features.T
        sims.fill_diagonal_(-2.0)
        values, indices = sims.topk(k, dim=1)
        self.similarity = sims
        self.indices, self.values = indices, values

    def candidates(self, i: int) -> torch.Tensor:
        return self.indices[i][self.values[i] >= self.tau]

    def counts_above_tau(self) -> torch.Tensor:
        return (self.values >= self.tau).sum(dim=1)


@pytest.fixture(scope="module")
def table():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(12, 16, generator=generator), dim=1)
    cluster = torch.arange(600) % 12
    features = centres[cluster] + 0.15 * torch.randn(600, 16, generator=generator)
    return SimilarityTable(torch.nn.functional.normalize(features, dim=1), tau=0.7, k=20)


def test_groupdiff_l_statistics(table):
    plan = GroupBatchPlan(PlanConfig(group_size=4, group_share=0.25, query="emb"), table, 600, 64, seed=1)
    assert (plan.groups_per_rank, plan.singles_per_rank) == (4, 48)
    assert plan.steps_per_epoch == 600 // 48
    for step in range(plan.steps_per_epoch):
        batch = plan.batch(step)
        assert batch.groups.shape == (4, 4) and batch.singles.shape == (48,)
        assert batch.null_groups.all()  # GroupDiff-l: groups train the unconditional model
        for group in batch.groups:
            assert len(set(group.tolist())) == 4
            anchor, members = int(group[0]), group[1:]
            assert (table.similarity[anchor, members] >= table.tau).all()
    singles = torch.cat([plan.batch(s).singles for s in range(plan.steps_per_epoch)])
    assert len(set(singles.tolist())) == len(singles)  # an epoch sees every image once as a single


def test_groupdiff_f_groups_everything_and_drops_labels_of_a_tenth(table):
    plan = GroupBatchPlan(PlanConfig(mode="groupdiff-f", group_size=4, query="emb"), table, 600, 64, seed=0)
    assert (plan.groups_per_rank, plan.singles_per_rank) == (16, 0)
    null = torch.cat([plan.batch(s).null_groups for s in range(3 * plan.steps_per_epoch)]).float()
    assert 0.06 < null.mean() < 0.14  # 10% label dropout over ~450 groups
    anchors = torch.cat([plan.batch(s).groups[:, 0] for s in range(plan.steps_per_epoch)])
    assert len(set(anchors.tolist())) == len(anchors)


def test_plan_is_a_function_of_seed_and_epoch(table):
    config = PlanConfig(group_size=4, group_share=0.25, query="emb")
    a = GroupBatchPlan(config, table, 600, 64, seed=3)
    b = GroupBatchPlan(config, table, 600, 64, seed=3)
    steps = a.steps_per_epoch
    for step in (0, 5, steps + 1):  # also into the second epoch, asked for out of order
        assert torch.equal(a.batch(step).groups, b.batch(step).groups)
        assert torch.equal(a.batch(step).singles, b.batch(step).singles)
    assert not torch.equal(a.batch(0).singles, a.batch(steps).singles)  # epochs differ
    assert not torch.equal(a.batch(0).singles, GroupBatchPlan(config, table, 600, 64, seed=4).batch(0).singles)


def test_ranks_get_disjoint_shares_of_one_plan(table):
    config = PlanConfig(group_size=4, group_share=0.25, query="emb")
    whole = GroupBatchPlan(config, table, 600, 64, world_size=1, seed=2)
    ranks = [GroupBatchPlan(config, table, 600, 64, world_size=2, seed=2) for _ in range(2)]
    for step in range(4):
        shares = [plan.batch(step, rank) for rank, plan in enumerate(ranks)]
        assert not set(shares[0].singles.tolist()) & set(shares[1].singles.tolist())
        assert torch.equal(torch.cat([s.singles for s in shares]), whole.batch(step).singles)
        assert torch.equal(torch.cat([s.groups for s in shares]), whole.batch(step).groups)


@pytest.mark.parametrize("variation", [0.0, 50.0, 100.0])
def test_noise_level_variation_stays_within_its_bound(variation):
    t = group_timesteps(2000, 4, variation, torch.Generator().manual_seed(0)).view(2000, 4)
    spread = (t - t[:, :1]).abs()
    assert spread.max() <= variation / 1000 + 1e-6
    if variation:
        assert spread.max() > 0.8 * variation / 1000  # the bound is actually used
    assert ((t >= 0) & (t <= 1)).all()


def test_group_size_beyond_the_neighbours_available_is_an_error(table):
    with pytest.raises(ValueError, match="tau=0.7"):
        GroupBatchPlan(PlanConfig(group_size=40, group_share=1.0, query="emb"), table, 600, 80, seed=0)


def test_bad_batch_shapes(table):
    with pytest.raises(ValueError, match="divisible by the group size"):
        GroupBatchPlan(PlanConfig(mode="groupdiff-f", group_size=4, query="emb"), table, 600, 30)
    with pytest.raises(ValueError, match="too small"):
        GroupBatchPlan(PlanConfig(group_size=8, group_share=0.1, query="emb"), table, 600, 16)
    with pytest.raises(ValueError, match="divisible by 2 ranks"):
        GroupBatchPlan(PlanConfig(group_size=4, query="emb"), table, 600, 63, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GroupBatchPlan(PlanConfig(group_size=4, group_share=0.25, query="emb"), table, 40, 64)


def test_draw_members_excludes_the_anchor_and_repeats():
    from groupdiff.training.plan import draw_members

    rng = np.random.default_rng(0)
    for candidates in (np.arange(5), np.arange(10_000)):
        for anchor in (0, 3):
            picks = draw_members(rng, candidates, anchor, 3)
            assert anchor not in picks and len(set(picks.tolist())) == 3
