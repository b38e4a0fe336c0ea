"""Is a state-changing request from this site? The Origin (or Referer) check against cross-site
request forgery, for the progress page's buttons (``rowfill.airflow.web``).

The page authenticates by the Airflow UI's ``_token`` cookie, which a browser also attaches to a
POST that another site's page makes it send. Airflow's auth cannot tell the two apart; the Origin
header can: browsers send it with every POST, set to the site whose page sent it, and a page cannot
change it (Fetch standard, "origin header"; OWASP CSRF Prevention Cheat Sheet, "Verifying origin
with standard headers"). So a POST is accepted only when its Origin, or when that is missing its
Referer, names the host the request was sent to. Defence in depth beside the JSON-only body check
and Airflow's own authorization, not instead of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _source(url: str) -> tuple[str, int] | None:
    """(host, port) of an Origin or Referer value; None when it names no http(s) site (``null``,
    ``file://``, garbage)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme]


def _target(host: str) -> tuple[str, int | None] | None:
    """(host, port or None) of a Host or X-Forwarded-Host value; None for a value that is no host."""
    try:
        parts = urlsplit("//" + host.strip())
        return (parts.hostname.lower(), parts.port) if parts.hostname else None
    except ValueError:
        return None


def _matches(source: tuple[str, int], target: tuple[str, int | None]) -> bool:
    if source[0] != target[0]:
        return False
    if target[1] is None:  # Host without a port: the request went to a default port (80 or 443)
        return source[1] in _DEFAULT_PORTS.values()
    return source[1] == target[1]


def same_origin(method: str, headers: Mapping[str, str]) -> tuple[bool, str]:
    """Whether a request may change state, by its method and headers (names lower-case, as ASGI and
    Starlette give them), and why not.

    - GET, HEAD and OPTIONS change nothing: always allowed.
    - Otherwise the Origin header, or the Referer when there is no Origin, must name the host the
      request was sent to: the ``Host`` header (or ``X-Forwarded-Host``, which a proxy in front of
      the API server sets and a cross-site page cannot). A Host without a port matches that host on
      its scheme's default port (what a browser leaves out); a Host with one must match it.
    - With neither header, only a request authenticated by ``Authorization: Bearer`` is allowed: a
      browser always sends Origin with a POST, so such a request comes from a script holding a
      token, not from a page riding on the cookie.

    Returns ``(True, "")`` or ``(False, reason)``; the reason names the header and the value.
    """
    if method.upper() in SAFE_METHODS:
        return True, ""
    origin = headers.get("origin")
    name, value = ("Origin", origin) if origin is not None else ("Referer", headers.get("referer"))
    if value is None:
        if headers.get("authorization", "").lower().startswith("bearer "):
            return True, ""
        return False, "no Origin or Referer header: refusing a cookie-authenticated change that may come from another site"
    source = _source(value)
    if source is None:
        return False, f"{name} {value[:200]!r} names no site this page could be on"
    hosts = [headers.get("host", ""), *headers.get("x-forwarded-host", "").split(",")]
    for target in filter(None, map(_target, filter(None, hosts))):
        if _matches(source, target):
            return True, ""
    return False, f"{name} {value[:200]!r} is another site than this one ({headers.get('host', 'no Host header')})"
