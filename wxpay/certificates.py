"""Platform certificates (spec §2.5, mode 1): read ``GET /v3/certificates``.

Each certificate arrives encrypted with the APIv3 key (AEAD, associated data
``certificate``); a certificate that decrypts is authentic, because only WeChat Pay and the
merchant know that key. Expired or not-yet-valid certificates are dropped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from wxpay import aead
from wxpay.errors import MalformedNotificationError, UnexpectedResponseError

CERTIFICATES_PATH = "/v3/certificates"


def certificate_serial(certificate: x509.Certificate) -> str:
    """The serial as WeChat Pay writes it in ``Wechatpay-Serial``: upper-case hex."""
    return format(certificate.serial_number, "X")


def parse_certificates(
    body: bytes, api_v3_key: bytes | str, *, now: datetime | None = None, status: int = 200
) -> dict[str, rsa.RSAPublicKey]:
    """Decrypt and load the certificates of a ``/v3/certificates`` answer, keyed by serial."""
    moment = now or datetime.now(UTC)
    try:
        items = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError):
        raise UnexpectedResponseError(
            status, "/v3/certificates answer has no data[] list", body_excerpt=body[:200].decode("utf-8", "replace")
        ) from None
    keys: dict[str, rsa.RSAPublicKey] = {}
    for item in items:
        block = item.get("encrypt_certificate") or {}
        if block.get("algorithm") != aead.ALGORITHM:
            raise MalformedNotificationError(
                f"certificate {item.get('serial_no')}: algorithm {block.get('algorithm')!r}"
            )
        pem = aead.decrypt(api_v3_key, block["nonce"], block["ciphertext"], block.get("associated_data", ""))
        certificate = x509.load_pem_x509_certificate(pem)
        serial = certificate_serial(certificate)
        if serial != str(item.get("serial_no", "")).upper():
            raise UnexpectedResponseError(
                status, f"certificate serial {serial} differs from serial_no {item.get('serial_no')}"
            )
        if not (certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc):
            continue
        key = certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            keys[serial] = key
    return keys
