"""Where a run may read from: local paths under the allowed roots, or s3:// under an allowed
S3 prefix. The rules are the same for a dataset file and a base model folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from tasks.errors import ConfigError


def _within(path: str, roots: tuple[str, ...]) -> bool:
    resolved = Path(path).resolve()
    for root in roots:
        if "://" in root:
            continue
        base = Path(root).resolve()
        if resolved == base or base in resolved.parents:
            return True
    return False


def scheme_of(uri: str) -> str:
    scheme = urlparse(uri).scheme
    return scheme if len(scheme) > 1 else ""  # "C:" is a drive, not a scheme


def resolve_location(uri: str, allowed_roots: tuple[str, ...], *, field: str,
                     folder: bool = False) -> str:
    """Check scheme and location; return what fsspec should open (a resolved local path or
    the s3:// URI). `folder` asks for a directory instead of a file.

    Local paths are resolved (symlinks, '..') before the root check, so a path cannot escape
    an allowed root by indirection. s3:// needs an allowed root that is its prefix.
    """
    scheme = scheme_of(uri)
    if scheme in ("", "file"):
        path = urlparse(uri).path if scheme == "file" else uri
        if not _within(path, allowed_roots):
            raise ConfigError(
                f"{field}: {uri!r} is outside the allowed roots {list(allowed_roots)} "
                "(set AIGC_ALLOWED_ROOTS to widen them)"
            )
        exists = Path(path).is_dir() if folder else Path(path).is_file()
        if not exists:
            raise ConfigError(f"{field}: {uri!r} does not exist or is not a "
                              f"{'folder' if folder else 'file'}")
        return str(Path(path).resolve())
    if scheme == "s3":
        if not any(r.startswith("s3://") and uri.rstrip("/").startswith(r.rstrip("/") + "/")
                   for r in allowed_roots):
            raise ConfigError(f"{field}: {uri!r} is not under an allowed s3:// root")
        return uri
    raise ConfigError(f"{field}: unsupported scheme {scheme!r} in {uri!r} "
                      "(use a local path, file:// or s3://)")
