"""AEAD_AES_256_GCM with the APIv3 key (spec §3.1).

The APIv3 key (32 ASCII characters) is used as raw bytes, the nonce and associated data as
UTF-8 bytes, and the Base64 ciphertext carries the 16-byte GCM tag at its end.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxpay.errors import ConfigurationError, DecryptionError

ALGORITHM = "AEAD_AES_256_GCM"


def _key(api_v3_key: bytes | str) -> bytes:
    key = api_v3_key.encode("utf-8") if isinstance(api_v3_key, str) else bytes(api_v3_key)
    if len(key) != 32:
        raise ConfigurationError(f"the APIv3 key must be 32 bytes, got {len(key)}")
    return key


def decrypt(api_v3_key: bytes | str, nonce: str, ciphertext: str, associated_data: str = "") -> bytes:
    """Decrypt a ``resource`` (or ``encrypt_certificate``) block; raise :class:`DecryptionError` on failure."""
    key = _key(api_v3_key)
    try:
        data = base64.b64decode(ciphertext, validate=True)
        return AESGCM(key).decrypt(nonce.encode("utf-8"), data, associated_data.encode("utf-8"))
    except InvalidTag:
        raise DecryptionError(
            "AEAD_AES_256_GCM tag check failed: wrong APIv3 key, or tampered ciphertext/nonce/associated_data"
        ) from None
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError(f"AEAD_AES_256_GCM input is malformed: {exc}") from None


def encrypt(api_v3_key: bytes | str, nonce: str, plaintext: bytes, associated_data: str = "") -> str:
    """The inverse of :func:`decrypt`, for the simulator and tests: Base64(ciphertext || tag)."""
    sealed = AESGCM(_key(api_v3_key)).encrypt(nonce.encode("utf-8"), plaintext, associated_data.encode("utf-8"))
    return base64.b64encode(sealed).decode("ascii")
