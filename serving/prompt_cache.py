"""The prompt cache: a text model's prompt encodings, least recently used out, in front of its text encoder.

Popular prompts come back again and again (a product catalogue, a benchmark's Zipf mix), and the encoder is a
transformer of its own: the executor asks the cache for the encodings of the groups it starts, and only the
prompts it has not seen recently reach the encoder, all of them in one call. Keys are normalised prompts
(`groupdiff.protocol.prompts`), so spellings that differ only in whitespace share an entry. An entry is one
row (1, T, C) on the encoder's device; a running group keeps its own reference, so an eviction never touches
work in flight. The null prompt is not cached here: guidance takes it from the model's stored buffers.

Hits, misses, evictions and the entry count go to the ``groupdiff_prompt_cache_*`` metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from groupdiff.model.text_condition import TextCondition
from groupdiff.model.text_encoder import TextEncoder

from .metrics import ServingMetrics

DEFAULT_PROMPT_CACHE_SIZE = 1024  # entries; CLIP-L's 77 x 768 float32 tokens are about 240 KB each


class PromptCache:
    def __init__(self, encoder: TextEncoder, capacity: int = DEFAULT_PROMPT_CACHE_SIZE,
                 metrics: ServingMetrics | None = None):
        if capacity < 0:
            raise ValueError(f"the prompt cache size must not be negative, got {capacity}")
        self.encoder = encoder
        self.capacity = capacity  # 0: every lookup encodes
        self.metrics = metrics
        self._entries: OrderedDict[str, TextCondition] = OrderedDict()  # least recently used first
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def check(self, prompt: str) -> None:
        """Raise `PromptTooLong` (a ValueError naming the token limit) when the tokenizer cannot hold ``prompt``.
        Tokenizing only: safe beside the model thread's encoder calls."""
        self.encoder.tokenize([prompt])

    def conditions(self, prompts: Sequence[str]) -> dict[str, TextCondition]:
        """Each distinct prompt's encoding, one row (1, T, C) each; the ones not cached go through the encoder
        together, once. A hit or miss counts once per distinct prompt of the call."""
        distinct = list(dict.fromkeys(prompts))
        found = {}
        for prompt in distinct:
            if prompt in self._entries:
                self._entries.move_to_end(prompt)
                found[prompt] = self._entries[prompt]
        missing = [prompt for prompt in distinct if prompt not in found]
        if missing:
            encoded = self.encoder.encode(missing)  # (M, T, C) tokens
            for row, prompt in enumerate(missing):
                found[prompt] = encoded[row]  # a copy of one row: the batch is not kept alive
                self._store(prompt, found[prompt])
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if self.metrics is not None:
            self.metrics.prompt_cache_lookups.labels(result="hit").inc(len(found) - len(missing))
            self.metrics.prompt_cache_lookups.labels(result="miss").inc(len(missing))
            self.metrics.prompt_cache_entries.set(len(self._entries))
        return found

    def _store(self, prompt: str, condition: TextCondition) -> None:
        if self.capacity == 0:
            return
        self._entries[prompt] = condition
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1
            if self.metrics is not None:
                self.metrics.prompt_cache_evictions.inc()
