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

__all__ = [
    "KEYS_VARIABLE",
    "KeyFileError",
    "add_key",
    "default_key_file",
    "load_keys",
    "load_wrapper",
    "loose_permissions",
    "new_key_id",
]

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
    return _keys(document, str(path))


def _keys(document: Any, path: str) -> list[dict[str, Any]]:
    """The checked key list of a key file's parsed JSON (`path` names its source)."""
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
    return _wrapper(keys, str(path))


def _wrapper(keys: list[dict[str, Any]], path: str) -> MultiWrapper:
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


KEYS_VARIABLE = "OPLOG_KEYS"
"""The environment variable that may hold the key material itself (for containers): a key
file's JSON, or base64 of it."""


def default_key_file() -> Path:
    """``$OPLOG_KEY_FILE``, else ``$XDG_DATA_HOME/oplog/keys.json`` (``~/.local/share``)."""
    chosen = os.environ.get("OPLOG_KEY_FILE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "oplog" / "keys.json"


def load_keys(path: Path | str | None = None, *, strict_permissions: bool = False) -> MultiWrapper:
    """The wrapper of an oplog's keys: its first key encrypts, every key decrypts.

    The keys come from `path` when given; else from ``$OPLOG_KEYS`` (the key material itself,
    for containers and secret stores: a key file's JSON, ``{"keys": [{"id": ..., "key":
    <base64 of 32 bytes>}, ...]}``, or base64 of that JSON); else from the key file
    ``$OPLOG_KEY_FILE``, else ``$XDG_DATA_HOME/oplog/keys.json``. A key file readable by others
    warns on the ``oplog`` logger, or is refused with `strict_permissions`.

    Raises:
        KeyFileError: No keys where they were looked for, or malformed ones (named key by key;
            the material itself is never shown).
    """
    if path is not None:
        return load_wrapper(Path(path), strict_permissions=strict_permissions)
    material = os.environ.get(KEYS_VARIABLE)
    if material:
        return _wrapper(_keys(_parse_material(material), KEYS_VARIABLE), KEYS_VARIABLE)
    return load_wrapper(default_key_file(), strict_permissions=strict_permissions)


def _parse_material(material: str) -> Any:
    text = material.strip()
    if not text.startswith("{"):
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            text = ""
    try:
        return json.loads(text)
    except ValueError:
        raise KeyFileError(
            f"{KEYS_VARIABLE} is neither a key file's JSON nor base64 of it"
        ) from None


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
