"""Serving defaults the CLI needs while it builds its parsers, kept free of the serving stack's imports
(pydantic, FastAPI, BentoML), so every other ``groupdiff`` command works on machines without them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_STUDENT = Path(str(resources.files("groupdiff"))) / "assets" / "fmnist-student"
ENV_TOKEN = "GROUPDIFF_API_TOKEN"  # bearer token of the REST API; unset = no authentication
