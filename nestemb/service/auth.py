"""API keys scoped to collections and to read or write access.

The keys file is JSON::

    {"keys": [
        {"key": "s3cret-reader", "access": "read",  "collections": ["docs"]},
        {"key": "s3cret-writer", "access": "write", "collections": ["docs"]},
        {"key": "s3cret-admin",  "access": "admin", "collections": ["*"]}
    ]}

``read`` searches and reads points; ``write`` also upserts and deletes points; ``admin`` also
creates and drops the collections (``PUT`` / ``DELETE /collections/{name}``). Each level
includes the ones before it; ``"*"`` means every collection (present and future). Requests carry
the key as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. The check runs in
:mod:`nestemb.service.app`'s outer middleware, on the method and path alone, before any body is
read or anything is written.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path

from nestemb.errors import NestembError

ACCESS = ("read", "write", "admin")
"""Access levels, each including the ones before it."""


@dataclass(frozen=True)
class ApiKey:
    key: str
    access: str
    collections: tuple[str, ...]

    def allows(self, collection: str | None, access: str) -> bool:
        """Whether this key may do ``access`` (read / write / admin) on ``collection``
        (``None``: an operation on no single collection, e.g. listing, which any key may do).

        Example:
            >>> k = ApiKey("k" * 16, "write", ("docs",))
            >>> k.allows("docs", "write"), k.allows("docs", "admin"), k.allows("other", "read")
            (True, False, False)
        """
        if ACCESS.index(access) > ACCESS.index(self.access):
            return False
        return collection is None or "*" in self.collections or collection in self.collections


def load_api_keys(path: str | Path) -> list[ApiKey]:
    """Read and check a keys file (see the module docstring).

    Example:
        >>> import tempfile, json, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "keys.json"
        >>> _ = p.write_text(json.dumps({"keys": [{"key": "k" * 16, "access": "read",
        ...                                        "collections": ["docs"]}]}))
        >>> load_api_keys(p)[0].allows("docs", "write")
        False
    """
    p = Path(path)
    if not p.is_file():
        raise NestembError(f"api keys file not found: {p}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NestembError(f"api keys file {p} is not valid JSON: {e}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise NestembError(f"api keys file {p} must hold {{\"keys\": [...]}} with at least one key")
    keys, seen = [], set()
    for i, e in enumerate(entries):
        where = f"api keys file {p}, keys[{i}]"
        if not isinstance(e, dict):
            raise NestembError(f"{where}: each key must be an object")
        key, access, cols = e.get("key"), e.get("access"), e.get("collections")
        if not isinstance(key, str) or len(key) < 16 or not re.fullmatch(r"[\x21-\x7e]+", key):
            raise NestembError(f"{where}: key must be at least 16 printable ASCII characters")
        if key in seen:
            raise NestembError(f"{where}: duplicate key")
        seen.add(key)
        if access not in ACCESS:
            raise NestembError(f"{where}: access must be one of {ACCESS}, got {access!r}")
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
            raise NestembError(f"{where}: collections must be a non-empty list of names or '*'")
        keys.append(ApiKey(key, access, tuple(cols)))
    return keys


def find_key(keys: list[ApiKey], given: str | None) -> ApiKey | None:
    """The key whose secret equals ``given`` (constant-time comparisons), or None."""
    if not given:
        return None
    found = None
    for k in keys:
        if hmac.compare_digest(k.key.encode(), given.encode()):
            found = k
    return found
