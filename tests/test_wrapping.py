"""Encryption in go-kms-wrapping's blob format: Go interop, tamper detection, key rotation."""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import oplog
from oplog import _core, wrapping
from oplog.proto.blob_pb2 import BlobInfo, KeyInfo
from oplog.wrapping import _parse, blob_key_id
from tests.golden import load

SAMPLES = [
    (generation, sample)
    for generation, body in load("entry_encryption").items()
    if isinstance(body, dict)
    for sample in body["samples"]
]
KEY = bytes(range(32))


def _vector_wrapper(generation: str) -> oplog.AeadWrapper:
    body = load("entry_encryption")[generation]
    return oplog.AeadWrapper(bytes.fromhex(body["key_hex"]), body["key_id"])


@pytest.mark.parametrize(("generation", "sample"), SAMPLES, ids=[g for g, _ in SAMPLES])
def test_blobs_written_by_go_decrypt(generation: str, sample: dict[str, Any]) -> None:
    """The Go aead wrapper's stored entry data decrypts to the recorded plaintext."""
    plaintext = _vector_wrapper(generation).decrypt(bytes.fromhex(sample["ct_data_hex"]))
    assert plaintext.hex() == sample["plaintext_hex"]


@pytest.mark.parametrize(("generation", "sample"), SAMPLES, ids=[g for g, _ in SAMPLES])
def test_go_entries_decrypt_and_decode(generation: str, sample: dict[str, Any]) -> None:
    """A Go-written entry's data decrypts and decodes to its operations."""
    from tests.golden import CATALOG

    plaintext = _vector_wrapper(generation).decrypt(bytes.fromhex(sample["ct_data_hex"]))
    (op,) = oplog.Queue(plaintext, catalog=CATALOG)
    assert op.type_name == "user"
    assert op.op_type == oplog.OpType.CREATE
    assert op.message.name == "Alice"  # type: ignore[attr-defined]


def test_our_blobs_have_the_go_layout() -> None:
    """A blob is 0a len (nonce||ct||tag) 2a len (1a len key_id), nothing else."""
    w = oplog.AeadWrapper(KEY, "k1")
    blob = w.encrypt(b"hello")
    info = BlobInfo.FromString(blob)
    assert (
        blob
        == BlobInfo(ciphertext=info.ciphertext, key_info=KeyInfo(key_id="k1")).SerializeToString()
    )
    assert blob[0] == 0x0A
    assert blob.endswith(bytes.fromhex("2a041a026b31"))
    assert len(info.ciphertext) == 12 + 5 + 16
    assert w.decrypt(blob) == b"hello"


@pytest.mark.parametrize("size", [0, 1, 100, 115, 116, 200, 20_000, 3_000_000])
def test_blobs_equal_the_protobuf_serialization_at_every_length(size: int) -> None:
    """The hand-framed blob is byte for byte what the protobuf runtime writes (varint edges)."""
    w = oplog.AeadWrapper(KEY, "k" * 130)
    blob = w.encrypt(b"x" * size)
    info = BlobInfo.FromString(blob)
    assert blob == info.SerializeToString()
    assert w.decrypt(blob) == b"x" * size


def test_nonces_are_fresh() -> None:
    """Encrypting the same plaintext twice gives different blobs."""
    w = oplog.AeadWrapper(KEY, "k1")
    assert w.encrypt(b"same") != w.encrypt(b"same")


def test_flipping_any_bit_of_a_blob_raises_decrypt_error() -> None:
    """Every single-bit change of a stored blob is rejected with DecryptError, never plaintext."""
    w = oplog.AeadWrapper(KEY, "k1")
    blob = w.encrypt(b"an oplog entry's queue")
    for i in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[i // 8] ^= 1 << (i % 8)
        with pytest.raises(oplog.DecryptError):
            w.decrypt(bytes(tampered))


def test_truncated_blobs_raise_decrypt_error() -> None:
    """Every proper prefix of a blob is rejected with DecryptError."""
    w = oplog.AeadWrapper(KEY, "k1")
    blob = w.encrypt(b"payload")
    for n in range(len(blob)):
        with pytest.raises(oplog.DecryptError):
            w.decrypt(blob[:n])


def test_wrong_key_and_unknown_key_id_raise_decrypt_error() -> None:
    """A different key, or a blob naming a key the wrapper does not have, is a DecryptError."""
    blob = oplog.AeadWrapper(KEY, "k1").encrypt(b"x")
    with pytest.raises(oplog.DecryptError, match="authentication failed"):
        oplog.AeadWrapper(bytes(32), "k1").decrypt(blob)
    with pytest.raises(oplog.DecryptError, match="'k1', not 'k2'"):
        oplog.AeadWrapper(KEY, "k2").decrypt(blob)
    with pytest.raises(oplog.DecryptError, match="unknown key id 'k1'"):
        oplog.MultiWrapper(oplog.AeadWrapper(KEY, "k2")).decrypt(blob)


def test_non_blob_input_raises_decrypt_error() -> None:
    """Garbage, a wrapped-key blob, or a str is a DecryptError."""
    w = oplog.AeadWrapper(KEY, "k1")
    with pytest.raises(oplog.DecryptError):
        w.decrypt(b"\xff\xff\xff")
    with pytest.raises(oplog.DecryptError, match="wrapped"):
        w.decrypt(BlobInfo(wrapped=True).SerializeToString())
    with pytest.raises(oplog.DecryptError, match="bytes"):
        w.decrypt("text")  # type: ignore[arg-type]


def test_multi_wrapper_rotates_keys() -> None:
    """MultiWrapper encrypts with the primary and decrypts blobs of every key it holds."""
    old = oplog.AeadWrapper.generate("2025")
    new = oplog.AeadWrapper.generate("2026")
    old_blob = old.encrypt(b"old entry")
    rotated = oplog.MultiWrapper(new, old)
    new_blob = rotated.encrypt(b"new entry")
    assert blob_key_id(new_blob) == "2026"
    assert rotated.key_id == "2026"
    assert rotated.key_ids == ["2026", "2025"]
    assert rotated.decrypt(old_blob) == b"old entry"
    assert rotated.decrypt(new_blob) == b"new entry"
    with pytest.raises(oplog.DecryptError):
        old.decrypt(new_blob)
    with pytest.raises(oplog.InvalidParameterError, match="2026"):
        oplog.MultiWrapper(new, oplog.AeadWrapper.generate("2026"))


def test_keys_never_appear_in_repr_errors_or_pickles() -> None:
    """repr shows only key ids; bad keys are described by length; wrappers do not pickle."""
    secret = bytes(range(100, 132))
    w = oplog.AeadWrapper(secret, "k1")
    for text in (repr(w), repr(oplog.MultiWrapper(w)), str(w)):
        assert secret.hex() not in text
        assert repr(secret) not in text
    with pytest.raises(oplog.InvalidParameterError) as info:
        oplog.AeadWrapper(secret[:31], "k1")
    assert "31" in str(info.value)
    assert repr(secret[:31]) not in str(info.value)
    with pytest.raises(TypeError, match="secret"):
        pickle.dumps(w)


@pytest.mark.parametrize(
    ("key", "key_id"), [(b"short", "k"), (bytes(32), ""), ("x" * 32, "k"), (bytes(32), None)]
)
def test_invalid_keys_and_ids_are_rejected(key: Any, key_id: Any) -> None:
    """Keys are 32 bytes and key ids non-empty strings."""
    with pytest.raises(oplog.InvalidParameterError):
        oplog.AeadWrapper(key, key_id)


class EnvelopeWrapper:
    """An envelope-encryption wrapper, as one backed by a KMS would be: the data key is kept
    wrapped by a key-encryption key (here a local AES key standing in for the KMS), unwrapped
    once, and blobs are AES-GCM under the data key in the Go layout (through AeadWrapper)."""

    def __init__(self, wrapped_data_key: bytes, kek: AESGCM, key_id: str) -> None:
        nonce, sealed = wrapped_data_key[:12], wrapped_data_key[12:]
        self._inner = oplog.AeadWrapper(kek.decrypt(nonce, sealed, key_id.encode()), key_id)

    @staticmethod
    def wrap(data_key: bytes, kek: AESGCM, key_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + kek.encrypt(nonce, data_key, key_id.encode())

    @property
    def key_id(self) -> str:
        return self._inner.key_id

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._inner.encrypt(plaintext)

    def decrypt(self, blob: bytes) -> bytes:
        return self._inner.decrypt(blob)


def test_any_wrapper_of_the_protocol_works_alone_and_in_rotation() -> None:
    """A wrapper of one's own (here envelope encryption with a wrapped data key) satisfies the
    Wrapper protocol, and MultiWrapper rotates between it and AeadWrapper keys."""
    kek = AESGCM(AESGCM.generate_key(bit_length=256))
    data_key = AESGCM.generate_key(bit_length=256)
    envelope = EnvelopeWrapper(EnvelopeWrapper.wrap(data_key, kek, "dek-2"), kek, "dek-2")
    assert isinstance(envelope, oplog.Wrapper)
    old = oplog.AeadWrapper.generate("aead-1")
    rotated = oplog.MultiWrapper(envelope, old)
    assert rotated.key_ids == ["dek-2", "aead-1"]
    blob = rotated.encrypt(b"queue")
    assert blob_key_id(blob) == "dek-2"
    assert rotated.decrypt(blob) == b"queue"
    assert rotated.decrypt(old.encrypt(b"older")) == b"older"
    assert oplog.MultiWrapper(old, envelope).decrypt(blob) == b"queue"
    with pytest.raises(oplog.DecryptError, match="unknown key id"):
        oplog.MultiWrapper(old).decrypt(blob)


def _parsed_path(w: oplog.AeadWrapper, blob: bytes) -> bytes | str:
    """What the protobuf parser's path makes of `blob`: its plaintext or its error."""
    try:
        return w._open(_parse(blob))
    except oplog.DecryptError as exc:
        return str(exc)


def _decrypted(wrapper: Any, blob: bytes) -> bytes | str:
    try:
        return bytes(wrapper.decrypt(blob))
    except oplog.DecryptError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None)
@given(
    size=st.sampled_from([0, 1, 80, 99, 100, 16_340, 16_400]),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "append", "insert"]), st.integers(0, 10**6)),
        max_size=3,
    ),
)
def test_the_fast_blob_path_decides_as_the_protobuf_parser(size: int, edits: list[Any]) -> None:
    """AeadWrapper.decrypt (and MultiWrapper's, through its primary) reads blobs of its own
    layout without the protobuf parser; for any blob, valid or changed (bits flipped, cut,
    bytes appended or inserted, lengths across the one-, two- and three-byte varints), it
    returns the plaintext or raises the error the parser's path gives."""
    w = oplog.AeadWrapper(KEY, "k1")
    multi = oplog.MultiWrapper(w, oplog.AeadWrapper(bytes(32), "k0"))
    blob = bytearray(w.encrypt(os.urandom(size)))
    for edit, at in edits:
        at %= len(blob) + 1
        if edit == "flip" and at < len(blob):
            blob[at] ^= 1 << (at % 8)
        elif edit == "cut":
            del blob[at:]
        elif edit == "append":
            blob += bytes([at % 256])
        elif edit == "insert":
            blob[at:at] = bytes([at % 256])
    expected = _parsed_path(w, bytes(blob))
    assert _decrypted(w, bytes(blob)) == expected
    # A page's loop decrypts what the parser's path decrypts, or leaves the blob to it.
    (paged,) = wrapping.page_plaintexts(multi, [bytes(blob)])
    assert paged is None or paged == expected
    if isinstance(expected, bytes):
        assert _decrypted(multi, bytes(blob)) == expected
    else:
        assert isinstance(_decrypted(multi, bytes(blob)), str)


def test_a_blob_with_a_non_minimal_length_decrypts_as_the_parser_reads_it() -> None:
    """A ciphertext length written in more varint bytes than needed (valid protobuf) is read
    the same on the fast path: the blob decrypts."""
    w = oplog.AeadWrapper(KEY, "k1")
    blob = w.encrypt(b"x" * 20)
    size = blob[1]
    padded = b"\x0a" + bytes([size | 0x80, 0]) + blob[2:]
    assert w.decrypt(padded) == b"x" * 20 == w._open(_parse(padded))


@pytest.mark.parametrize("size", [0, 99, 100, 16_000])
def test_own_blobs_up_to_16_kib_take_the_fast_path(size: int) -> None:
    """The wrapper's own blobs with a one- or two-byte length are read without the parser."""
    w = oplog.AeadWrapper(KEY, "k1")
    blob = w.encrypt(bytes(size))
    assert w._own_plaintexts([blob]) == [bytes(size)]
    assert oplog.AeadWrapper(KEY, "k2")._own_plaintexts([blob]) == [None]
    assert BlobInfo.FromString(blob).key_info.key_id == "k1"


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    plaintexts=st.lists(st.binary(max_size=300), max_size=8),
    flips=st.lists(st.integers(0, 10**6), max_size=3),
)
def test_the_rust_core_opens_a_page_of_blobs_as_openssl_does(
    key: bytes, plaintexts: list[bytes], flips: list[int]
) -> None:
    """``_core.open_own_blobs`` (AES-256-GCM in the Rust core) gives each blob of a page the
    plaintext OpenSSL (``cryptography``'s AESGCM) gives its sealed part, and None where
    OpenSSL finds a changed bit; an item that is not exactly bytes is None too."""
    w = oplog.AeadWrapper(key, "k1")
    blobs = [bytearray(w.encrypt(p)) for p in plaintexts]
    for flip in flips:
        if blobs:
            blob = blobs[flip % len(blobs)]
            # A bit of the sealed part (nonce, ciphertext or tag), never of the framing.
            start, end = (
                (2, 2 + blob[1]) if blob[1] < 0x80 else (3, 3 + (blob[1] & 0x7F | blob[2] << 7))
            )
            at = start + flip % (end - start)
            blob[at] ^= 1 << (flip % 8)
    expected: list[bytes | None] = []
    for blob in blobs:
        sealed = BlobInfo.FromString(bytes(blob)).ciphertext
        try:
            expected.append(AESGCM(key).decrypt(sealed[:12], sealed[12:], None))
        except InvalidTag:
            expected.append(None)
    page = [bytes(blob) for blob in blobs]
    assert _core.open_own_blobs(key, w._key_info_field, page) == expected
    others: list[Any] = [bytearray(b) for b in page] + [memoryview(b) for b in page] + [None, 7]
    assert _core.open_own_blobs(key, w._key_info_field, others) == [None] * len(others)


def test_the_rust_core_opens_only_with_a_32_byte_key() -> None:
    with pytest.raises(oplog.InvalidParameterError, match="32 bytes, not 16"):
        _core.open_own_blobs(bytes(16), b"\x2a\x04\x1a\x02k1", [])
