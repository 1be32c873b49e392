"""Key files: written safely, loaded with a warning (or refused) when others can read them."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

import oplog
from oplog import keyfile


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_world_readable_temporary_file_does_not_make_a_readable_key_file(
    tmp_path: Path,
) -> None:
    """A leftover, world-readable ``keys.json.tmp`` is not reused: the key file is 0600."""
    path = tmp_path / "keys.json"
    leftover = tmp_path / "keys.json.tmp"
    leftover.write_text("{}")
    os.chmod(leftover, 0o644)
    keyfile.add_key(path, "k1")
    assert _mode(path) == 0o600
    assert leftover.read_text() == "{}"
    assert keyfile.load_wrapper(path).key_ids == ["k1"]


def test_a_symlink_where_the_temporary_file_goes_is_not_followed(tmp_path: Path) -> None:
    """A link planted at the temporary name is neither written through nor replaced: its
    target keeps its content, and the key file is a regular 0600 file."""
    path = tmp_path / "keys.json"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "keys.json.tmp").symlink_to(victim)
    keyfile.add_key(path, "k1")
    assert victim.read_text() == "precious"
    assert not path.is_symlink()
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keys.json.")] == []


def test_adding_a_key_keeps_the_older_ones_and_mode_0600(tmp_path: Path) -> None:
    """--add puts the new key first and keeps the others; the file stays 0600."""
    path = tmp_path / "keys.json"
    keyfile.add_key(path, "old")
    keyfile.add_key(path, "new")
    assert keyfile.load_wrapper(path).key_ids == ["new", "old"]
    assert _mode(path) == 0o600


def test_a_key_file_readable_by_others_warns_or_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Group- or world-readable key files load with a warning on the ``oplog`` logger that
    names the file and its mode (never a key); strict_permissions refuses them."""
    path = tmp_path / "keys.json"
    keyfile.add_key(path, "k1")
    with caplog.at_level(logging.WARNING, logger="oplog"):
        keyfile.load_wrapper(path)
    assert caplog.records == []
    os.chmod(path, 0o640)
    with caplog.at_level(logging.WARNING, logger="oplog"):
        keyfile.load_wrapper(path)
    (record,) = caplog.records
    assert record.name == "oplog"
    assert "0640" in record.getMessage()
    assert str(path) in record.getMessage()
    secret = json.loads(path.read_text())["keys"][0]["key"]
    assert secret not in record.getMessage()
    with pytest.raises(keyfile.KeyFileError, match="0640"):
        keyfile.load_wrapper(path, strict_permissions=True)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"keys": [{"id": "k", "key": 12345}]}, "key 'k' is a int, not a base64 string"),
        (
            {"keys": [{"id": "k", "key": "AAAA"}, {"id": "k", "key": "AAAA"}]},
            "two keys have the id 'k'",
        ),
        ({"keys": [{"id": "", "key": "AAAA"}]}, "key 0 has no id"),
        ({"keys": [{"id": "k", "key": "AAAA"}]}, "key 'k' is 3 bytes"),
        ({"keys": [{"id": "k", "key": "!!"}]}, "key 'k' is not valid base64"),
        ({"keys": []}, "holds no keys"),
        (["not", "an", "object"], "holds no keys"),
        ({"keys": ["k"]}, "key 0 needs an id and a key"),
    ],
    ids=["int-key", "duplicate-ids", "empty-id", "short-key", "bad-base64", "empty", "list", "str"],
)
def test_malformed_key_files_name_what_is_wrong(
    tmp_path: Path, document: object, match: str
) -> None:
    """Every malformed key file is a KeyFileError that says what is wrong with which key."""
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    with pytest.raises(keyfile.KeyFileError, match=match):
        keyfile.load_wrapper(path)


def _document(*keys: tuple[str, bytes]) -> str:
    return json.dumps({"keys": [{"id": i, "key": base64.b64encode(k).decode()} for i, k in keys]})


def test_keys_load_from_the_environment_for_containers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oplog.load_keys() takes key material from OPLOG_KEYS (a key file's JSON, or base64 of
    it) before OPLOG_KEY_FILE and the default file; an explicit path comes first of all."""
    first, second = bytes(range(32)), bytes(range(1, 33))
    document = _document(("env-1", first), ("env-0", second))
    file = tmp_path / "keys.json"
    keyfile.add_key(file, "from-file")
    monkeypatch.setenv("OPLOG_KEY_FILE", str(file))
    monkeypatch.delenv("OPLOG_KEYS", raising=False)
    assert oplog.load_keys().key_ids == ["from-file"]
    for value in (document, base64.b64encode(document.encode()).decode()):
        monkeypatch.setenv("OPLOG_KEYS", value)
        wrapper = oplog.load_keys()
        assert wrapper.key_ids == ["env-1", "env-0"]
        blob = oplog.AeadWrapper(second, "env-0").encrypt(b"older")
        assert wrapper.decrypt(wrapper.encrypt(b"new")) == b"new"
        assert wrapper.decrypt(blob) == b"older"
    assert oplog.load_keys(file).key_ids == ["from-file"]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("not json", "OPLOG_KEYS is neither"),
        ('{"keys": []}', "OPLOG_KEYS holds no keys"),
        ('{"keys": [{"id": "a", "key": "c2hvcnQ="}]}', "OPLOG_KEYS: key 'a' is 5 bytes"),
    ],
)
def test_bad_key_material_in_the_environment_is_named_not_shown(
    monkeypatch: pytest.MonkeyPatch, value: str, match: str
) -> None:
    """Malformed OPLOG_KEYS is a KeyFileError naming the variable and what is wrong, never
    echoing the material."""
    monkeypatch.setenv("OPLOG_KEYS", value)
    with pytest.raises(oplog.KeyFileError, match=match) as info:
        oplog.load_keys()
    assert "c2hvcnQ" not in str(info.value)
