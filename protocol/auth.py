"""Bearer-token authentication of the `/v1` routes."""

from __future__ import annotations

TOKEN_ENV = "GROUPDIFF_API_TOKEN"  # the server's token, and the clients' default one; unset = no authentication


def authorization_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
