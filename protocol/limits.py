"""The contract's fixed limits and defaults (a served model narrows some of them: `generate.RequestLimits`)."""

from __future__ import annotations

GROUP_POLICIES = ("isolated", "shared")  # default: the first
MAX_SEED = 2**63 - 1  # seeds travel as INT64 (Triton) and JSON integers
SEED_SPACE = 2**63  # image seeds wrap around here (image i uses seed + i), so every one fits an INT64
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 300.0
TEACHER_DEFAULT_STEPS = 25
TEACHER_MAX_STEPS = 250  # a teacher samples with any step count in 1..TEACHER_MAX_STEPS
MAX_GUIDANCE_SCALE = 20.0
DEFAULT_MAX_IMAGES = 64  # num_images per request, unless the server sets its own
MAX_PROMPT_CHARS = 500  # a prompt's characters after `normalise_prompt`; the text encoder's token limit also applies
