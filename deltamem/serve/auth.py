"""API keys: `tenant:key` lines in a file; only SHA-256 hashes are kept (in memory and in the database).

A presented key is hashed and compared with every stored hash by
`hmac.compare_digest`, without stopping at a match, so the time taken says
nothing about which keys exist. No key, and no hash, is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re

TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
DEFAULT_TENANT = "default"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """`{sha256(key): tenant}`. Empty means the server runs without keys (one tenant, loopback only)."""

    def __init__(self, hashes: dict[str, str] | None = None):
        self.hashes = dict(hashes or {})

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "KeyRing":
        """Parse `tenant:key` lines (blank lines and `#` comments skipped). Errors give the line number,
        never the line."""
        hashes: dict[str, str] = {}
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                tenant, sep, key = line.partition(":")
                tenant, key = tenant.strip(), key.strip()
                if not sep or not TENANT.match(tenant) or len(key) < 8:
                    raise ValueError(f"{path}:{n}: expected 'tenant:key' with a plain tenant name and a key of at "
                                     "least 8 characters")
                h = key_hash(key)
                if h in hashes and hashes[h] != tenant:
                    raise ValueError(f"{path}:{n}: the same key is given to two tenants")
                hashes[h] = tenant
        if not hashes:
            raise ValueError(f"{path}: no 'tenant:key' lines")
        return cls(hashes)

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of an `Authorization: Bearer <key>` header value, or None."""
        if not self.enabled:
            return DEFAULT_TENANT
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = key_hash(key.strip())
        found = None
        for h, tenant in self.hashes.items():  # no early exit: constant time in the position of a match
            if hmac.compare_digest(h, presented):
                found = tenant
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
