"""Prometheus metrics of the group scheduler; names and meanings are listed in docs/metrics.md.

Under BentoML the process runs in prometheus-client's multiprocess mode (BentoML sets
``PROMETHEUS_MULTIPROC_DIR``), where values live in shared files whatever registry a metric is
registered in; gauges therefore say how worker processes combine. The Triton frontend serves
`ServingMetrics.registry` on its own port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("queue", "denoise", "decode", "encode", "total")
OUTCOMES = ("ok", "rejected", "cancelled", "deadline", "error")
REJECTION_REASONS = ("queue_full", "overloaded", "invalid", "deadline", "cancelled", "unauthorized", "not_ready",
                     "shutting_down")
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FILL_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("groupdiff_queue_depth", "Requests waiting: not all of their groups running yet",
                                 registry=r, multiprocess_mode="livesum")
        self.queued_groups = Gauge("groupdiff_queued_groups", "Groups waiting to join the running batch",
                                   registry=r, multiprocess_mode="livesum")
        self.running_groups = Gauge("groupdiff_running_groups", "Groups in the running batch",
                                    registry=r, multiprocess_mode="livesum")
        self.group_fill = Histogram("groupdiff_group_fill_ratio", "Real (non-padding) members / group size, per group",
                                    buckets=FILL_BUCKETS, registry=r)
        self.group_members = Counter(
            "groupdiff_group_members_total", "Real (non-padding) members of the groups started, by whether their "
            "group was full: the share of images served in full groups", ["fill"], registry=r)
        self.batch_groups = Histogram("groupdiff_batch_groups", "Groups per runtime call",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram("groupdiff_stage_seconds", "Seconds per request in each stage",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.images = Counter("groupdiff_images_total", "Images returned", registry=r)
        self.requests = Counter("groupdiff_requests_total", "Finished requests by outcome", ["outcome"], registry=r)
        self.rejections = Counter("groupdiff_rejections_total", "Requests refused or dropped, by reason",
                                  ["reason"], registry=r)
        self.prompt_cache_lookups = Counter(
            "groupdiff_prompt_cache_lookups_total", "Text models: distinct prompts of the groups started, by whether "
            "their encoding was cached (hit) or had to be encoded (miss)", ["result"], registry=r)
        self.prompt_cache_evictions = Counter("groupdiff_prompt_cache_evictions_total",
                                              "Text models: prompt encodings dropped from the full cache", registry=r)
        self.prompt_cache_entries = Gauge("groupdiff_prompt_cache_entries", "Text models: prompt encodings cached",
                                          registry=r, multiprocess_mode="livesum")
        self.model_info = Gauge("groupdiff_model_info", "The served model and runtime (value 1)",
                                ["model_version", "kind", "runtime"], registry=r, multiprocess_mode="max")
        for stage in STAGES:  # every series exists from the start, so dashboards and alerts see zeros
            self.stage_seconds.labels(stage=stage)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        for fill in ("full", "partial"):
            self.group_members.labels(fill=fill)
        for result in ("hit", "miss"):
            self.prompt_cache_lookups.labels(result=result)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason=reason)

    def set_model(self, model_version: str, kind: str, runtime: str) -> None:
        self.model_info.labels(model_version=model_version, kind=kind, runtime=runtime).set(1)

    def group_started(self, real: int, size: int) -> None:
        """A group joined the batch with ``real`` of its ``size`` members real (the rest padding). The fill
        histogram counts groups; the members counter counts images, which is what a client sees."""
        self.group_fill.observe(real / size)
        self.group_members.labels(fill="full" if real == size else "partial").inc(real)

    def reject(self, reason: str) -> None:
        """A request refused or dropped: counted once as a rejection and once as a finished request."""
        self.rejections.labels(reason=reason).inc()
        outcome = {"deadline": "deadline", "cancelled": "cancelled"}.get(reason, "rejected")
        self.requests.labels(outcome=outcome).inc()
