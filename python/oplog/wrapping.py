"""Encryption of entry data: AES-256-GCM in go-kms-wrapping's blob format (WIRE.md §3).

The stored blob is a serialized ``BlobInfo`` whose ``ciphertext`` is ``nonce(12) || AES-GCM
ciphertext || tag(16)`` with no associated data, and whose ``key_info.key_id`` names the key. The
Go aead wrapper writes and reads exactly this, so entries written by either side decrypt on the
other.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError as ProtobufDecodeError

from oplog import _core
from oplog.errors import DecryptError, InvalidParameterError
from oplog.proto.blob_pb2 import BlobInfo, KeyInfo

__all__ = ["AeadWrapper", "KeyDeriving", "MultiWrapper", "Wrapper", "blob_key_id"]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


@runtime_checkable
class Wrapper(Protocol):
    """What an entry needs from its encryption: a key id, encrypt and decrypt."""

    @property
    def key_id(self) -> str:
        """The id of the key new blobs are encrypted with."""
        ...

    def encrypt(self, plaintext: bytes) -> bytes:
        """The serialized blob of `plaintext`."""
        ...

    def decrypt(self, blob: bytes) -> bytes:
        """The plaintext of a serialized blob; raises DecryptError."""
        ...


@runtime_checkable
class KeyDeriving(Protocol):
    """A wrapper that can also derive keys for other purposes from its key material (entry
    tags and signed heads, see :mod:`oplog.chain`). Optional: a :class:`Wrapper` without it
    writes entries without tags."""

    def derive_key(self, info: bytes, key_id: str | None = None) -> bytes:
        """32 bytes derived from the key with id `key_id` (the current key when None) for the
        purpose `info`; the same for the same key and `info`, unrelated across them.

        Raises:
            DecryptError: This wrapper has no key with that id.
        """
        ...


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _parse(blob: bytes) -> BlobInfo:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise DecryptError(f"a blob is bytes, not {type(blob).__name__}")
    try:
        info = BlobInfo.FromString(bytes(blob))
    except ProtobufDecodeError:
        raise DecryptError("the blob is not a serialized BlobInfo") from None
    if info.wrapped:
        raise DecryptError("the blob holds a wrapped (envelope-encrypted) key; not supported")
    return info


def blob_key_id(blob: bytes) -> str:
    """The key id a serialized blob names (empty when it names none).

    Raises:
        DecryptError: `blob` is not a serialized BlobInfo.
    """
    return _parse(blob).key_info.key_id


class AeadWrapper:
    """AES-256-GCM with one key, compatible with go-kms-wrapping's aead wrapper.

    Args:
        key: 32 secret bytes.
        key_id: The key's id, stored with every blob (and in ``oplog_entry.key_id``).

    Raises:
        InvalidParameterError: The key is not 32 bytes, or the key id is empty.
    """

    __slots__ = ("_aead", "_derived", "_key", "_key_id", "_key_info_field")

    def __init__(self, key: bytes, key_id: str) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
            # Never echo the key: only its type and length.
            size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
            raise InvalidParameterError(f"an AES-256 key is {KEY_SIZE} bytes, not {size}")
        if not isinstance(key_id, str) or not key_id:
            raise InvalidParameterError("key_id must be a non-empty str")
        # One AESGCM object per wrapper: building one per call costs more than the encryption
        # of a small entry.
        self._aead = AESGCM(bytes(key))
        self._key = bytes(key)
        self._derived: dict[bytes, bytes] = {}
        self._key_id = key_id
        # BlobInfo field 5 (key_info), the same for every blob: serialized once.
        key_info = KeyInfo(key_id=key_id).SerializeToString()
        self._key_info_field = b"\x2a" + _varint(len(key_info)) + key_info

    @classmethod
    def generate(cls, key_id: str) -> AeadWrapper:
        """A wrapper with a new random key from the operating system's CSPRNG."""
        return cls(AESGCM.generate_key(bit_length=256), key_id)

    @property
    def key_id(self) -> str:
        """The id of this wrapper's key."""
        return self._key_id

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypts `plaintext` under a fresh random nonce; returns the serialized blob."""
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, plaintext, None)
        # BlobInfo{ciphertext=1, key_info=5} exactly as protobuf serializes it (tested against
        # the protobuf runtime), without building a message per blob.
        return b"\x0a" + _varint(NONCE_SIZE + len(sealed)) + nonce + sealed + self._key_info_field

    def derive_key(self, info: bytes, key_id: str | None = None) -> bytes:
        """HKDF-SHA256 of this wrapper's key (no salt; `info`, a zero byte and the key id as
        its info): 32 bytes for another purpose than encryption. Derived once per `info`.

        Raises:
            DecryptError: `key_id` names another key.
        """
        if key_id is not None and key_id != self._key_id:
            raise DecryptError(f"no key {key_id!r} here: this wrapper has {self._key_id!r}")
        derived = self._derived.get(info)
        if derived is None:
            hkdf = HKDF(
                algorithm=hashes.SHA256(),
                length=KEY_SIZE,
                salt=None,
                info=bytes(info) + b"\x00" + self._key_id.encode(),
            )
            derived = self._derived[info] = hkdf.derive(self._key)
        return derived

    def decrypt(self, blob: bytes) -> bytes:
        """Decrypts a serialized blob written by this key.

        Raises:
            DecryptError: The blob is malformed or truncated, names no key or another key, or
                fails authentication (wrong key, any changed bit). No plaintext is returned.
        """
        (plaintext,) = self._own_plaintexts([blob])
        if plaintext is not None:
            return plaintext
        # Another layout, or a blob that does not decrypt: the parser's path reads it and
        # says why.
        return self._open(_parse(blob))

    def _own_plaintexts(self, blobs: list[bytes]) -> list[bytes | None]:
        """Each blob's plaintext, for a blob laid out exactly as :meth:`encrypt` lays out this
        key's blobs (field 1 with a one- or two-byte length, then this key's field 5, nothing
        else) that decrypts; None for any other blob (for the protobuf parser to read, and
        to say what is wrong). The Rust core reads the layout without the parser, which costs
        more than the decryption of a small entry, and opens a page of blobs in one call
        (``_core.open_own_blobs``): a blob read there parses to the same ciphertext and key
        id."""
        return _core.open_own_blobs(self._key, self._key_info_field, blobs)

    def _open(self, info: BlobInfo) -> bytes:
        key_id = info.key_info.key_id
        # The key id is not authenticated by GCM; insisting on it makes any damage to the
        # blob's framing (a flipped tag, a cut-off key_info) an error rather than a shrug.
        if not key_id:
            raise DecryptError("the blob names no key id")
        if key_id != self._key_id:
            raise DecryptError(f"the blob was encrypted with key {key_id!r}, not {self._key_id!r}")
        return self._decrypt(info.ciphertext)

    def _decrypt(self, data: bytes) -> bytes:
        if len(data) < NONCE_SIZE + TAG_SIZE:
            raise DecryptError(f"the ciphertext is {len(data)} bytes: too short for nonce and tag")
        try:
            return self._aead.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
        except InvalidTag:
            raise DecryptError(
                f"authentication failed with key {self._key_id!r}: wrong key or tampered data"
            ) from None

    def __repr__(self) -> str:
        return f"AeadWrapper(key_id={self._key_id!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the key somewhere the caller did not choose to put it.
        raise TypeError("AeadWrapper holds a secret key and cannot be pickled")


def page_plaintexts(wrapper: Wrapper, blobs: list[bytes]) -> list[bytes | None]:
    """The plaintexts of a page's blobs that an :class:`AeadWrapper` (or a
    :class:`MultiWrapper`'s primary) wrote, decrypted in one call; None for every other blob,
    which ``wrapper.decrypt`` then decrypts (or says why it does not)."""
    primary = wrapper._primary if isinstance(wrapper, MultiWrapper) else wrapper
    if isinstance(primary, AeadWrapper):
        return primary._own_plaintexts(blobs)
    return [None] * len(blobs)


class MultiWrapper:
    """Key rotation: encrypts with the primary wrapper, decrypts with whichever wrapper has the
    blob's key id. Any :class:`Wrapper` takes part (an :class:`AeadWrapper`, or one of one's
    own, such as a KMS-backed envelope-encryption wrapper).

    Args:
        primary: Encrypts new blobs.
        older: Decrypt blobs written with earlier keys.

    Raises:
        InvalidParameterError: Two wrappers share a key id.
    """

    __slots__ = ("_by_id", "_primary")

    def __init__(self, primary: Wrapper, *older: Wrapper) -> None:
        self._primary = primary
        self._by_id: dict[str, Wrapper] = {}
        for wrapper in (primary, *older):
            if wrapper.key_id in self._by_id:
                raise InvalidParameterError(f"two wrappers have key id {wrapper.key_id!r}")
            self._by_id[wrapper.key_id] = wrapper

    @property
    def key_id(self) -> str:
        """The primary key's id."""
        return self._primary.key_id

    @property
    def key_ids(self) -> list[str]:
        """Every key id this wrapper can decrypt, primary first."""
        return list(self._by_id)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypts with the primary key."""
        return self._primary.encrypt(plaintext)

    def decrypt(self, blob: bytes) -> bytes:
        """Decrypts with the wrapper of the blob's key id.

        Raises:
            DecryptError: The blob names no key id or an unknown one, or decryption fails.
        """
        (plaintext,) = page_plaintexts(self, [blob])  # most blobs are the primary key's
        if plaintext is not None:
            return plaintext
        info = _parse(blob)
        key_id = info.key_info.key_id
        if not key_id:
            raise DecryptError("the blob names no key id")
        wrapper = self._by_id.get(key_id)
        if wrapper is None:
            raise DecryptError(f"unknown key id {key_id!r}: known are {self.key_ids}")
        if isinstance(wrapper, AeadWrapper):
            return wrapper._open(info)  # the blob is parsed already
        return wrapper.decrypt(blob)

    def derive_key(self, info: bytes, key_id: str | None = None) -> bytes:
        """Derives from the key with id `key_id` (the primary's when None), by its wrapper.

        Raises:
            DecryptError: No wrapper has that key id, or that wrapper derives no keys.
        """
        wrapper = self._by_id.get(self.key_id if key_id is None else key_id)
        if wrapper is None:
            raise DecryptError(f"unknown key id {key_id!r}: known are {self.key_ids}")
        if not isinstance(wrapper, KeyDeriving):
            raise DecryptError(f"the wrapper of key {wrapper.key_id!r} derives no keys")
        return wrapper.derive_key(info, wrapper.key_id)

    def __repr__(self) -> str:
        return f"MultiWrapper(key_ids={self.key_ids!r})"
