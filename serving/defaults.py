"""Serving defaults the CLI needs while it builds its parsers, kept free of the serving stack's imports
(pydantic, FastAPI, BentoML), so every other ``groupdiff`` command works on machines without them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from groupdiff.protocol.auth import TOKEN_ENV as ENV_TOKEN  # noqa: F401  (the CLI shows it)

BUNDLED_STUDENT = Path(str(resources.files("groupdiff"))) / "assets" / "fmnist-student"
