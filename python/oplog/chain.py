"""Tamper evidence: entry tags, per-aggregate chains, and the verification that walks them.

Every entry written through :class:`oplog.Oplog` (``write``, ``write_many``, ``apply``) carries
a sequence number (``oplog_entry.chain_seq``: its position in its aggregate's history, from 1)
and a tag (``chain_tag``): HMAC-SHA256, under a key derived from the log's key, over the
aggregate name, the key id, the stored data (the blob), a SHA-256 digest of the entry's
metadata, the sequence number and the previous entry's tag (the byte layout is in
``src/chain.rs``). Each aggregate's head (its last sequence number and tag) is in
``oplog_chain_head``; a writer locks the heads of the aggregates it writes (one statement
before its write, in name order), so it knows the previous tag, and advances them in the
statement that inserts the entries and redeems the tickets.

The tag key is ``HKDF-SHA256(log key, info = "oplog entry tags v1" || 0x00 || key id)``: the
key never goes to the server, so without it nobody can make a tag, and the statements show
none of it. The blob format is unchanged: the Go original reads every entry.

:class:`ChainCheck` is the I/O-free part of verification: fed the entries of each aggregate in
sequence order, it names every problem it finds (:class:`VerifyProblem`); :class:`SavedHeads` is a
signed file of every aggregate's head, kept outside the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oplog import _core, pgarray
from oplog.entry import Entry, metadata_rows
from oplog.errors import DecryptError, InvalidParameterError, OplogError
from oplog.wrapping import KeyDeriving, Wrapper

__all__ = [
    "ChainCheck",
    "SavedHeads",
    "VerifyProblem",
    "VerifyReport",
    "metadata_digest",
    "tag_key",
]

TAG_INFO = b"oplog entry tags v1"
HEADS_INFO = b"oplog saved heads v1"
HEADS_FORMAT = "oplog-heads-v1"


def tag_key(wrapper: Wrapper, key_id: str | None = None) -> bytes | None:
    """The key of the tags of entries encrypted with `key_id` (the current key when None), or
    None when `wrapper` derives no keys (its entries are written without tags).

    Raises:
        DecryptError: `wrapper` has no key with that id.
    """
    if not isinstance(wrapper, KeyDeriving):
        return None
    return wrapper.derive_key(TAG_INFO, key_id)


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def metadata_digest(keys: Sequence[str], values: Sequence[str | None]) -> bytes:
    """SHA-256 of an entry's metadata rows, sorted, each key and value length-prefixed; a
    NULL value and ``''`` are the same (a key without a value, as the Go original writes it)."""
    pairs = sorted((k.encode(), (v or "").encode()) for k, v in zip(keys, values))
    digest = hashlib.sha256()
    for key, value in pairs:
        digest.update(_lp(key) + _lp(value))
    return digest.digest()


EMPTY_METADATA = metadata_digest((), ())


@dataclass(frozen=True)
class VerifyProblem:
    """One thing verification found wrong.

    Attributes:
        kind: What is wrong (see :data:`PROBLEM_KINDS`).
        entry: The entry it was found at, or None (a missing range, a head).
        aggregate: The aggregate, when the problem is in its chain.
        detail: A sentence for people.
    """

    kind: str
    entry: int | None
    aggregate: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "entry": self.entry,
            "aggregate": self.aggregate,
            "problem": self.detail,
        }


PROBLEM_KINDS = {
    "undecryptable": "the blob does not decrypt with the log's keys (changed or forged data)",
    "undecodable": "the decrypted data does not decode as operations",
    "tag": "the tag does not match the entry (changed data, key id, aggregate or metadata)",
    "copy": "a blob stored again (a copied or re-inserted entry)",
    "sequence": "a sequence number taken twice in one aggregate",
    "order": "the entry's id is lower than its predecessor's (entries swapped or moved)",
    "missing": "sequence numbers missing in the middle of a chain (deleted entries)",
    "truncated": "the chain ends before its head (the newest entries deleted)",
    "head": "the head does not match the chain's last entry",
    "saved-head": "the chain does not reach a saved head, or reaches another tag there",
    "unchained": "an entry without a tag (only with require_chain)",
}
"""The kinds of :class:`VerifyProblem`, with what each means."""


@dataclass
class VerifyReport:
    """What :meth:`oplog.Oplog.verify` found.

    Attributes:
        entries: Entries checked.
        chained: Of those, entries with a tag (checked against their chain).
        unchained: Entries without one (written before migration 5, by the Go original, or by
            the lower-level API): decrypted and decoded, not chained.
        aggregates: Aggregates with a chain.
        problems: Everything found wrong, in the order found.
        heads: Every aggregate's head as verified: name -> (sequence, tag).
    """

    entries: int = 0
    chained: int = 0
    unchained: int = 0
    aggregates: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)
    heads: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


class ChainCheck:
    """Checks chains, one aggregate at a time, its entries fed in (sequence, id) order.

    Args:
        wrapper: Derives the tag keys (per key id).
        heads: The stored heads, read before the entries: name -> (sequence, tag).
        saved: Heads saved earlier (:class:`SavedHeads`), or None.
        require_chain: Report entries without a tag as problems.
    """

    def __init__(
        self,
        wrapper: Wrapper,
        heads: dict[str, tuple[int, bytes]],
        saved: dict[str, tuple[int, bytes]] | None = None,
        *,
        require_chain: bool = False,
    ) -> None:
        self.wrapper = wrapper
        self.heads = heads
        self.saved = saved or {}
        self.require_chain = require_chain
        self.report = VerifyReport()
        self._keys: dict[str, bytes | None] = {}
        self._blobs: dict[bytes, int] = {}
        self._digests: dict[tuple[tuple[str, ...], tuple[str | None, ...]], bytes] = {}
        self._seen_aggregates: set[str] = set()
        # The aggregate being fed: its last (sequence, tag, id), and its tags at the
        # sequences of its stored and saved heads.
        self._current: str | None = None
        self._last: tuple[int, bytes, int] = (0, b"", 0)
        self._tags_at: dict[int, bytes] = {}
        self._watch: set[int] = set()

    def _key(self, key_id: str) -> bytes | None:
        if key_id not in self._keys:
            try:
                self._keys[key_id] = tag_key(self.wrapper, key_id)
            except DecryptError:
                self._keys[key_id] = None
        return self._keys[key_id]

    def _problem(self, kind: str, entry: int | None, aggregate: str | None, detail: str) -> None:
        self.report.problems.append(VerifyProblem(kind, entry, aggregate, detail))

    def metadata_digest(self, keys: Sequence[str], values: Sequence[str | None]) -> bytes:
        """:func:`metadata_digest`, remembered for metadata seen before (logs repeat it)."""
        key = (tuple(keys), tuple(values))
        digest = self._digests.get(key)
        if digest is None:
            if len(self._digests) > 10_000:
                self._digests.clear()
            digest = self._digests[key] = metadata_digest(keys, values)
        return digest

    def blob(self, entry_id: int, data: bytes) -> None:
        """Notes an entry's blob; a blob seen before is a copy. (A blob starts with its random
        nonce, so its first 48 bytes identify it.)"""
        self.report.entries += 1
        head = bytes(data[:48])
        first = self._blobs.setdefault(head, entry_id)
        if first != entry_id:
            # Entries are walked by aggregate: the copy is the one with the later id.
            original, copy = sorted((first, entry_id))
            self._blobs[head] = original
            self._problem("copy", copy, None, f"entry {copy} stores entry {original}'s blob")

    def aggregate(
        self,
        name: str,
        rows: Sequence[tuple[int, str, bytes, int | None, bytes | None]],
        digests: dict[int, bytes],
    ) -> None:
        """Checks a part of one aggregate's entries: ``(id, key_id, data, chain_seq,
        chain_tag)`` rows in (sequence, id) order, the unchained last, its parts fed in order
        (a call with another name ends the aggregate before); `digests` maps entry ids with
        metadata to their :func:`metadata_digest`."""
        if name != self._current:
            self._end_aggregate()
            self._current = name
            self._last = (0, b"", 0)
            self._tags_at = {}
            heads = (self.heads.get(name), self.saved.get(name))
            self._watch = {head[0] for head in heads if head is not None}
        last_seq, last_tag, last_id = self._last
        to_check: list[tuple[int, str, bytes, int, bytes, bytes]] = []
        for id_, key_id, data, seq, tag in rows:
            if seq is None or tag is None:
                self.report.unchained += 1
                if self.require_chain:
                    self._problem("unchained", id_, name, f"entry {id_} has no tag")
                continue
            self.report.chained += 1
            tag = bytes(tag)
            if seq <= last_seq:
                self._problem(
                    "sequence", id_, name,
                    f"entry {id_} takes sequence {seq} of {name!r} again (entry {last_id} has"
                    f" {last_seq})",
                )  # fmt: skip
                continue
            if seq > last_seq + 1:
                # The previous tag is gone with the missing entries: this one cannot be
                # checked against it.
                gap = f"{last_seq + 1}" if seq == last_seq + 2 else f"{last_seq + 1}-{seq - 1}"
                self._problem(
                    "missing", id_, name,
                    f"sequence {gap} of {name!r} is missing (before entry {id_})",
                )  # fmt: skip
            else:
                if id_ < last_id:
                    self._problem(
                        "order", id_, name,
                        f"entry {id_} (sequence {seq}) comes before entry {last_id} (sequence"
                        f" {last_seq}) of {name!r}",
                    )  # fmt: skip
                to_check.append((id_, key_id, bytes(data), seq, last_tag, tag))
            if seq in self._watch:
                self._tags_at[seq] = tag
            last_seq, last_tag, last_id = seq, tag, id_
        self._last = (last_seq, last_tag, last_id)
        self._check_tags(name, to_check, digests)

    def _end_aggregate(self) -> None:
        name = self._current
        if name is None:
            return
        self._current = None
        self._seen_aggregates.add(name)
        if self._last[0]:
            self.report.aggregates += 1
        self._check_head(name, self._last[0], self._tags_at)

    def _check_tags(
        self,
        name: str,
        rows: list[tuple[int, str, bytes, int, bytes, bytes]],
        digests: dict[int, bytes],
    ) -> None:
        by_key: dict[str, list[tuple[int, str, bytes, int, bytes, bytes]]] = {}
        for row in rows:
            by_key.setdefault(row[1], []).append(row)
        for key_id, group in by_key.items():
            key = self._key(key_id)
            if key is None:
                for row in group:
                    self._problem(
                        "tag", row[0], name,
                        f"entry {row[0]}: no key {key_id!r} to check its tag with",
                    )  # fmt: skip
                continue
            expected = _core.entry_tags(
                key, key_id, [name] * len(group), [row[2] for row in group],
                [digests.get(row[0], EMPTY_METADATA) for row in group],
                [row[3] for row in group], [row[4] for row in group],
            )  # fmt: skip
            for row, want in zip(group, expected):
                if not hmac.compare_digest(want, row[5]):
                    self._problem(
                        "tag", row[0], name,
                        f"entry {row[0]} (sequence {row[3]} of {name!r}) does not match its"
                        " tag: its data, key id, aggregate, metadata or place changed",
                    )  # fmt: skip

    def _check_head(self, name: str, last_seq: int, tags_at: dict[int, bytes]) -> None:
        head = self.heads.get(name)
        if head is not None and head[0] > 0:
            seq, tag = head
            if seq > last_seq:
                self._problem(
                    "truncated", None, name,
                    f"{name!r} ends at sequence {last_seq}; its head is at {seq}",
                )  # fmt: skip
            elif tags_at.get(seq) != tag:
                self._problem(
                    "head", None, name,
                    f"the head of {name!r} (sequence {seq}) does not match the entry there",
                )  # fmt: skip
            self.report.heads[name] = (seq, tag)
        elif last_seq:
            self._problem(
                "head", None, name, f"{name!r} has entries up to {last_seq} and no head"
            )  # fmt: skip
        saved = self.saved.get(name)
        if saved is not None:
            seq, tag = saved
            if seq > last_seq:
                self._problem(
                    "saved-head", None, name,
                    f"{name!r} ends at sequence {last_seq}; a saved head is at {seq}",
                )  # fmt: skip
            elif tags_at.get(seq) != tag:
                self._problem(
                    "saved-head", None, name,
                    f"the entry at sequence {seq} of {name!r} is not the one its saved head"
                    " names",
                )  # fmt: skip

    def finish(self) -> VerifyReport:
        """The report, after the heads and saved heads of aggregates with no entries left."""
        self._end_aggregate()
        for name in sorted((set(self.heads) | set(self.saved)) - self._seen_aggregates):
            self._check_head(name, 0, {})
        return self.report


class SavedHeads:
    """Every aggregate's head at a clean verify, in a file signed with the log's key
    (HMAC-SHA256 under ``HKDF(log key, "oplog saved heads v1" || 0x00 || key id)``), so that a
    later verify can tell that no chain lost its newest entries, even with its head rolled
    back in the database.

    The file is JSON: ``{"format", "key_id", "saved_at", "heads": {name: [sequence, tag
    hex]}, "mac"}``; the MAC covers the rest, serialized with sorted keys.
    """

    @staticmethod
    def _mac(wrapper: Wrapper, body: dict[str, Any], key_id: str) -> str:
        if not isinstance(wrapper, KeyDeriving):
            raise InvalidParameterError("saving heads needs a wrapper that derives keys")
        key = wrapper.derive_key(HEADS_INFO, key_id)
        text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(key, text, hashlib.sha256).hexdigest()

    @classmethod
    def save(
        cls, path: str | os.PathLike[str], wrapper: Wrapper, heads: dict[str, tuple[int, bytes]]
    ) -> None:
        """Writes `heads` to `path`, signed (atomically: a temporary file renamed)."""
        body: dict[str, Any] = {
            "format": HEADS_FORMAT,
            "key_id": wrapper.key_id,
            "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "heads": {name: [seq, tag.hex()] for name, (seq, tag) in sorted(heads.items())},
        }
        body["mac"] = cls._mac(wrapper, body, wrapper.key_id)
        target = Path(path)
        fd, temp = tempfile.mkstemp(dir=target.parent or ".", prefix=target.name + ".")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(body, out, indent=1, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], wrapper: Wrapper) -> dict[str, tuple[int, bytes]]:
        """The heads in `path`, after checking its signature.

        Raises:
            OplogError: The file cannot be read, is not a heads file, or its signature does not
                match (changed, or signed with another key).
        """
        try:
            body = json.loads(Path(path).read_text())
            mac = body.pop("mac")
            key_id = body["key_id"]
            if body.get("format") != HEADS_FORMAT:
                raise ValueError(f"format {body.get('format')!r}")
            heads = {
                str(name): (int(seq), bytes.fromhex(tag))
                for name, (seq, tag) in body["heads"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OplogError(f"{path}: not a saved-heads file: {exc}") from None
        try:
            want = cls._mac(wrapper, body, key_id)
        except DecryptError as exc:
            raise OplogError(f"{path}: cannot check its signature: {exc}") from None
        if not hmac.compare_digest(want, str(mac)):
            raise OplogError(f"{path}: its signature does not match: the file was changed")
        return heads


def group_digests(rows: Iterable[Sequence[Any]]) -> dict[int, bytes]:
    """Metadata digests by entry id, from ``(entry_id, key, value)`` rows."""
    grouped: dict[int, tuple[list[str], list[str | None]]] = {}
    for entry_id, key, value in rows:
        keys, values = grouped.setdefault(entry_id, ([], []))
        keys.append(key)
        values.append(value)
    return {entry_id: metadata_digest(*kv) for entry_id, kv in grouped.items()}


def copy_params(
    entries: Sequence[Entry], chain: dict[int, tuple[int | None, bytes | None]]
) -> dict[str, Any]:
    """The parameters of ``_sql.COPY_ENTRIES`` for a page of entries read from the source, with
    `chain` (entry id -> its stored sequence and tag): what a replica needs to verify its copy
    of the log as the source's."""
    seqs: list[str | None] = []
    tags: list[bytes | None] = []
    meta_ord: list[int] = []
    keys: list[str] = []
    values: list[str | None] = []
    heads: dict[str, tuple[int, bytes]] = {}
    for ord_, entry in enumerate(entries, start=1):
        if entry.blob is None or entry.id is None:
            raise InvalidParameterError("copying the log needs entries as read from the source")
        seq, tag = chain.get(entry.id, (None, None))
        seqs.append(None if seq is None else str(seq))
        tags.append(None if tag is None else bytes(tag))
        if seq is not None and tag is not None:
            heads[entry.aggregate_name] = (seq, bytes(tag))  # entries come in chain order
        k, v = metadata_rows(entry.metadata)
        meta_ord += [ord_] * len(k)
        keys += k
        values += v
    names = sorted(heads)
    return {
        "versions": pgarray.TextArray.of([e.format_version for e in entries]),
        "aggregates": pgarray.TextArray.of([e.aggregate_name for e in entries]),
        "datas": pgarray.ByteaArray.of([bytes(e.blob) for e in entries if e.blob is not None]),
        "key_ids": pgarray.TextArray.of([e.key_id for e in entries]),
        "seqs": pgarray.TextArray.of(seqs),
        "tags": pgarray.ByteaArray.of(tags),
        "meta_ord": pgarray.Int8Array.of(meta_ord),
        "keys": pgarray.TextArray.of(keys),
        "values": pgarray.TextArray.of(values),
        "head_names": pgarray.TextArray.of(names),
        "head_seqs": pgarray.Int8Array.of([heads[n][0] for n in names]),
        "head_tags": pgarray.ByteaArray.of([heads[n][1] for n in names]),
    }
