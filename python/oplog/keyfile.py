"""Key files: the keys of an oplog, the first being the primary (used for new entries).

The file is JSON, ``{"keys": [{"id": "...", "key": "<base64 of 32 bytes>"}, ...]}``, created
with mode 0600. Keys are never printed or logged; only their ids are.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from oplog.errors import OplogError
from oplog.wrapping import KEY_SIZE, AeadWrapper, MultiWrapper

__all__ = ["KeyFileError", "add_key", "load_wrapper", "new_key_id"]


class KeyFileError(OplogError):
    """The key file is missing, unreadable or malformed."""


def new_key_id() -> str:
    """A fresh key id: ``key-`` and 8 random hex digits."""
    return "key-" + os.urandom(4).hex()


def _read(path: Path) -> list[dict[str, str]]:
    try:
        document = json.loads(path.read_text())
        keys = document["keys"]
        if not isinstance(keys, list) or not keys:
            raise KeyFileError(f"{path} holds no keys")
        for item in keys:
            if not isinstance(item, dict) or not {"id", "key"} <= item.keys():
                raise KeyFileError(f"{path}: every key needs an id and a key")
        return keys
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}: create one with `oplog keygen`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an oplog key file ({type(exc).__name__})") from None


def load_wrapper(path: Path) -> MultiWrapper:
    """The wrapper of a key file: its first key encrypts, every key decrypts."""
    wrappers = []
    for item in _read(path):
        try:
            key = base64.b64decode(item["key"], validate=True)
            wrappers.append(AeadWrapper(key, item["id"]))
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{path}: key {item['id']!r} is not 32 bytes of base64") from None
    return MultiWrapper(wrappers[0], *wrappers[1:])


def add_key(path: Path, key_id: str, *, replace: bool = False) -> None:
    """Writes a new random key as the primary of `path` (mode 0600).

    An existing file keeps its keys after the new one, for decrypting older entries, unless
    `replace` is true.
    """
    keys: list[dict[str, str]] = []
    if path.exists() and not replace:
        keys = _read(path)
        if any(item["id"] == key_id for item in keys):
            raise KeyFileError(f"{path} already has a key {key_id!r}")
    secret = base64.b64encode(os.urandom(KEY_SIZE)).decode()
    keys.insert(0, {"id": key_id, "key": secret})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": keys}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
