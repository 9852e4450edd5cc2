"""Which paths the API key (`--api-key`) guards: an operator's choice, `--api-key-scope`.

- `api` (default): the OpenAI API under /v1 (so /v1/metrics too); /metrics and the API docs
  (/openapi.json, /docs, /redoc) stay open for scrapers and browsers on a trusted network.
- `all`: the docs and /metrics also need the key, for a server whose port faces the outside.
Health (/v1/health/*, /health) is open in both: load balancers probe it without credentials.
"""

from __future__ import annotations

HEALTH_PATHS = ("/health",)
HEALTH_PREFIXES = ("/v1/health/",)
OPERATOR_PATHS = ("/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")

# scope -> does a path (not a health path) need the key?
SCOPES = {
    "api": lambda path: path.startswith("/v1/"),
    "all": lambda path: path.startswith("/v1/") or path in OPERATOR_PATHS,
}


def needs_key(path: str, scope: str) -> bool:
    if path in HEALTH_PATHS or path.startswith(HEALTH_PREFIXES):
        return False
    return SCOPES[scope](path)
