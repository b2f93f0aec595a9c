"""Optional bearer-token auth, shared by the gateway's REST and gRPC sides."""

from __future__ import annotations

import hmac

from cifarflow.serving.errors import Unauthenticated


class BearerAuth:
    """Checks `Authorization: Bearer <token>`; with no token configured everything passes."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, header: str | None) -> None:
        if self._token is None:
            return
        if not header:
            raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, supplied = header.strip().partition(" ")
        # compare_digest: the time taken must not reveal how much of the token matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            supplied.strip().encode(), self._token
        ):
            raise Unauthenticated("invalid bearer token")
