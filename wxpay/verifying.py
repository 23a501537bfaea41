"""Verifying WeChat Pay's signatures on responses and callbacks (spec §2).

A :class:`Verifier` maps serials to public keys: the WeChat Pay public-key id
(``PUB_KEY_ID_...``) and/or platform-certificate serials. Both modes live in one mapping,
which is what the official "combined" verifiers do during the migration: the key is chosen
by each message's ``Wechatpay-Serial``. Key rotation is data: add a key, drop a key.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from wxpay.errors import (
    ConfigurationError,
    MissingSignatureError,
    SignatureMismatchError,
    SignatureProbeError,
    TimestampOutOfWindowError,
    UnknownSerialError,
    UnsupportedAlgorithmError,
)
from wxpay.signing import SCHEME, response_message

HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE_TYPE = "Wechatpay-Signature-Type"
HEADER_REQUEST_ID = "Request-ID"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"
MAX_CLOCK_SKEW = 300  # seconds, as the Go and PHP SDKs (spec §2.3)


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """Load an RSA public key from a public-key PEM or a certificate PEM."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigurationError("WeChat Pay public key / certificate is not a readable PEM") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigurationError("WeChat Pay public key must be RSA")
    return key


def public_key_pem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of an RSA public key, or of a private key's public half."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_signature(
    public_key: rsa.RSAPublicKey,
    message: bytes,
    signature: str,
    *,
    serial: str | None = None,
    request_id: str | None = None,
) -> None:
    """Check a SHA256withRSA Base64 signature; raise :class:`SignatureMismatchError` if it fails."""
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise SignatureMismatchError(
            f"signature does not verify with the key of serial {serial}", serial=serial, request_id=request_id
        ) from exc


@dataclass(frozen=True)
class SignedHeaders:
    """The Wechatpay-* headers of one response or callback."""

    timestamp: str
    nonce: str
    signature: str
    serial: str
    signature_type: str
    request_id: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedHeaders:
        lower = {k.lower(): v for k, v in headers.items()}
        request_id = lower.get(HEADER_REQUEST_ID.lower())
        values = {}
        for name in (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SERIAL):
            value = lower.get(name.lower())
            if not value:
                raise MissingSignatureError(
                    f"{name} header is missing", serial=lower.get(HEADER_SERIAL.lower()), request_id=request_id
                )
            values[name] = value
        return cls(
            timestamp=values[HEADER_TIMESTAMP],
            nonce=values[HEADER_NONCE],
            signature=values[HEADER_SIGNATURE],
            serial=values[HEADER_SERIAL],
            signature_type=lower.get(HEADER_SIGNATURE_TYPE.lower()) or SCHEME,
            request_id=request_id,
        )


class Verifier:
    """Public keys by serial / ``PUB_KEY_ID_...``, plus the ±300 s timestamp window.

    ``clock`` returns Unix seconds (injectable for tests).
    """

    def __init__(
        self,
        keys: Mapping[str, rsa.RSAPublicKey | bytes | str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_skew: int = MAX_CLOCK_SKEW,
    ):
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._clock = clock
        self.max_skew = max_skew
        for serial, key in (keys or {}).items():
            self.add(serial, key)

    @classmethod
    def from_public_key(cls, key_id: str, pem: bytes | str, **kw) -> Verifier:
        """Public-key mode: one WeChat Pay public key and its ``PUB_KEY_ID_...``."""
        if not key_id.startswith(PUBLIC_KEY_ID_PREFIX):
            raise ConfigurationError(f"a WeChat Pay public key id starts with {PUBLIC_KEY_ID_PREFIX}")
        return cls({key_id: pem}, **kw)

    def __repr__(self) -> str:
        return f"Verifier(serials={sorted(self._keys)!r})"

    @property
    def serials(self) -> list[str]:
        return sorted(self._keys)

    @property
    def preferred_serial(self) -> str | None:
        """What to send as the request's ``Wechatpay-Serial``: the public-key id if we have one."""
        ids = [s for s in self._keys if s.startswith(PUBLIC_KEY_ID_PREFIX)]
        return (ids or sorted(self._keys) or [None])[0]

    def add(self, serial: str, key: rsa.RSAPublicKey | bytes | str) -> None:
        public = key if isinstance(key, rsa.RSAPublicKey) else load_public_key(key)
        self._keys = {**self._keys, serial: public}  # copy-on-write: readers never see a half update

    def replace_certificates(self, certificates: Mapping[str, rsa.RSAPublicKey]) -> None:
        """Swap in a freshly downloaded set of platform certificates, keeping public-key ids."""
        kept = {s: k for s, k in self._keys.items() if s.startswith(PUBLIC_KEY_ID_PREFIX)}
        self._keys = {**kept, **certificates}

    def public_keys(self) -> dict[str, rsa.RSAPublicKey]:
        """A copy of the serial → key mapping (e.g. to hand certificates to another process as PEM)."""
        return dict(self._keys)

    def knows(self, serial: str) -> bool:
        return serial in self._keys

    def verify_message(self, serial: str, message: bytes, signature: str, *, request_id: str | None = None) -> None:
        """Check one signature by serial. Probes and unknown serials have their own errors."""
        if signature.startswith(SIGNTEST_PREFIX):
            raise SignatureProbeError(
                "WECHATPAY/SIGNTEST/ signature probe rejected", serial=serial, request_id=request_id
            )
        key = self._keys.get(serial)
        if key is None:
            raise UnknownSerialError(
                f"no WeChat Pay key known for serial {serial!r} (known: {', '.join(self.serials) or 'none'})",
                serial=serial,
                request_id=request_id,
            )
        verify_signature(key, message, signature, serial=serial, request_id=request_id)

    def verify(self, headers: Mapping[str, str], body: bytes) -> SignedHeaders:
        """Verify a signed response or callback: headers present, type, probe, window, serial, RSA.

        Returns the parsed headers; raises a :class:`~wxpay.errors.VerificationError` subclass.
        """
        signed = SignedHeaders.from_headers(headers)
        common = {"serial": signed.serial, "request_id": signed.request_id}
        if signed.signature_type != SCHEME:
            raise UnsupportedAlgorithmError(f"unsupported Wechatpay-Signature-Type {signed.signature_type!r}", **common)
        if signed.signature.startswith(SIGNTEST_PREFIX):
            raise SignatureProbeError("WECHATPAY/SIGNTEST/ signature probe rejected", **common)
        try:
            timestamp = int(signed.timestamp)
        except ValueError:
            raise MissingSignatureError("Wechatpay-Timestamp is not Unix seconds", **common) from None
        now = self._clock()
        if abs(now - timestamp) >= self.max_skew:
            raise TimestampOutOfWindowError(
                f"Wechatpay-Timestamp {timestamp} is {abs(now - timestamp):.0f} s from now (limit {self.max_skew} s)",
                timestamp=timestamp,
                now=now,
                **common,
            )
        self.verify_message(
            signed.serial,
            response_message(signed.timestamp, signed.nonce, body),
            signed.signature,
            request_id=signed.request_id,
        )
        return signed
