"""Which requests ``facerig ui`` answers: its own page's, from the address it is bound to.

A browser lets any web page send requests to 127.0.0.1; Chromium's private-network protection stops some
of them, other browsers do not, and a DNS-rebinding name (evil.example resolving to 127.0.0.1) passes
every same-origin rule. So the server checks, on every request:

- ``Host`` is the bound address or name with the bound port (for a loopback bind: 127.0.0.1, localhost or
  [::1]), which a rebinding name is not; a wildcard bind (0.0.0.0) has no names to check against;
- ``Origin``, when the browser sends one, is the page's own (``http://`` + that Host);
- off loopback, a token printed at start (as notebook servers do): ``?token=`` in the URL, then kept in a
  same-site cookie the page's requests carry, or an ``X-Facerig-Token`` header for scripts.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("", "0.0.0.0", "::")
TOKEN_HEADER = "X-Facerig-Token"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "[::1]"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token(host: str) -> str | None:
    """A fresh token when ``host`` is reachable from other machines; None on loopback."""
    return None if is_loopback(host) else secrets.token_urlsafe(18)


class Guard:
    """Admission of requests to a server bound to ``host``:``port`` (``port`` as bound, not 0)."""

    def __init__(self, host: str, port: int, token: str | None = None):
        self.port, self.token = port, token
        self.cookie = f"facerig_token_{port}"  # per port: two servers on one machine keep their own
        if host in WILDCARD:
            self.hosts = None  # any Host: the token is the check
        else:
            names = set(LOOPBACK_NAMES) if is_loopback(host) else {host.lower()}
            if ":" in host and not host.startswith("["):
                names.add(f"[{host.lower()}]")
            self.hosts = {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())

    def url(self, host: str) -> str:
        shown = "127.0.0.1" if host in WILDCARD else host
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def refusal(self, headers, query: str) -> str | None:
        """Why this request is refused (answered 403), or None to serve it."""
        host = (headers.get("Host") or "").strip().lower()
        if self.hosts is not None and host not in self.hosts:
            return (f"Host {host or '(none)'!r} is not this server's address ({sorted(self.hosts)[0]}): "
                    "refused, as a page on another site would send it")
        origin = headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}":
            return f"Origin {origin!r} is not this page's: refused"
        if self.token is not None and not self._has_token(headers, query):
            return "missing or wrong token: open the URL facerig ui printed at start (it ends in ?token=...)"
        return None

    def _has_token(self, headers, query: str) -> bool:
        given = [headers.get(TOKEN_HEADER) or "", *parse_qs(query).get("token", [])]
        try:
            morsel = SimpleCookie(headers.get("Cookie") or "").get(self.cookie)
        except CookieError:
            morsel = None
        given.append(morsel.value if morsel else "")
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    def set_cookie(self, query: str) -> str | None:
        """The Set-Cookie value that keeps a token given in the URL for the page's later requests."""
        if self.token is None or not parse_qs(query).get("token"):
            return None
        return f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
