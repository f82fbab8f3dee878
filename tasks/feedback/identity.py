"""How a user id is stored: a keyed hash, never the id itself.

The server stores `user_ref(user_id)` with each request; erasure and lineage find a user's
rows by computing the same reference from the id the user gives. The key is
AIGC_USER_HASH_KEY (Kubernetes: the server Secret's `user-hash-key`, the same for every
replica); the embedded default keeps a random one in `<AIGC_HOME>/serving/user-hash.key`,
made on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from tasks.settings import home

KEY_ENV = "AIGC_USER_HASH_KEY"


def _key_file() -> Path:
    return home() / "serving" / "user-hash.key"


def user_hash_key(env: dict[str, str] | None = None) -> bytes:
    """The deployment's hashing key: from the environment, else this machine's key file."""
    value = (os.environ if env is None else env).get(KEY_ENV, "").strip()
    if value:
        return value.encode()
    path = _key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # exclusive create: two processes starting together agree on one key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()


def user_ref(user_id: str, key: bytes) -> str:
    """The stored reference of a user id (HMAC-SHA256, 128 bits in hex)."""
    return "u-" + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]
