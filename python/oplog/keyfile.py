"""Key files: the keys of an oplog, the first being the primary (used for new entries).

The file is JSON, ``{"keys": [{"id": "...", "key": "<base64 of 32 bytes>"}, ...]}``, created
with mode 0600. Keys are never printed or logged; only their ids are.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from oplog.errors import KeyFileError
from oplog.wrapping import KEY_SIZE, AeadWrapper, MultiWrapper

__all__ = ["KeyFileError", "add_key", "load_wrapper", "loose_permissions", "new_key_id"]

logger = logging.getLogger("oplog")


def new_key_id() -> str:
    """A fresh key id: ``key-`` and 8 random hex digits."""
    return "key-" + os.urandom(4).hex()


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}: create one with `oplog keygen`") from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path} is not an oplog key file ({type(exc).__name__})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise KeyFileError(f'{path} holds no keys (expected {{"keys": [...]}})')
    seen: set[str] = set()
    for index, item in enumerate(keys):
        if not isinstance(item, dict) or not {"id", "key"} <= item.keys():
            raise KeyFileError(f"{path}: key {index} needs an id and a key")
        key_id = item["id"]
        if not isinstance(key_id, str) or not key_id:
            raise KeyFileError(f"{path}: key {index} has no id (a non-empty string)")
        if key_id in seen:
            raise KeyFileError(f"{path}: two keys have the id {key_id!r}")
        seen.add(key_id)
        if not isinstance(item["key"], str):
            raise KeyFileError(
                f"{path}: key {key_id!r} is a {type(item['key']).__name__}, not a base64 string"
            )
    return keys


def loose_permissions(path: Path) -> str | None:
    """Why `path` is readable by others than its owner (group or world bits set), or None."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        return (
            f"key file {path} has mode {mode:04o}: readable or writable by others than its"
            f" owner (chmod 600 {path})"
        )
    return None


def load_wrapper(path: Path, *, strict_permissions: bool = False) -> MultiWrapper:
    """The wrapper of a key file: its first key encrypts, every key decrypts.

    A key file that its group or others can read or write is logged as a warning on the
    ``oplog`` logger, or refused with `strict_permissions`.

    Raises:
        KeyFileError: The file is missing, unreadable or malformed (named key by key), or it
            has loose permissions and `strict_permissions` is set.
    """
    keys = _read(path)
    problem = loose_permissions(path)
    if problem is not None:
        if strict_permissions:
            raise KeyFileError(problem)
        logger.warning("%s", problem)
    wrappers = []
    for item in keys:
        try:
            key = base64.b64decode(item["key"], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{path}: key {item['id']!r} is not valid base64") from None
        if len(key) != KEY_SIZE:
            raise KeyFileError(
                f"{path}: key {item['id']!r} is {len(key)} bytes; an AES-256 key is {KEY_SIZE}"
            )
        wrappers.append(AeadWrapper(key, item["id"]))
    return MultiWrapper(wrappers[0], *wrappers[1:])


def add_key(path: Path, key_id: str, *, replace: bool = False) -> None:
    """Writes a new random key as the primary of `path`, mode 0600.

    The new file is written to a fresh temporary file in the same directory, created
    exclusively with mode 0600 (never through an existing file or link), then renamed over
    `path`. An existing file keeps its keys after the new one, for decrypting older entries,
    unless `replace` is true.

    Raises:
        KeyFileError: `key_id` is empty or already in the file, or the file is malformed.
    """
    if not isinstance(key_id, str) or not key_id:
        raise KeyFileError(f"a key id is a non-empty string, not {key_id!r}")
    keys: list[dict[str, Any]] = []
    if path.exists() and not replace:
        keys = _read(path)
        if any(item["id"] == key_id for item in keys):
            raise KeyFileError(f"{path} already has a key {key_id!r}")
    secret = base64.b64encode(os.urandom(KEY_SIZE)).decode()
    keys.insert(0, {"id": key_id, "key": secret})
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp opens with O_CREAT | O_EXCL (and O_NOFOLLOW) and mode 0600 under a random name.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"keys": keys}, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
