"""Simulated merchants and their key material, generated at run time (nothing real is committed).

Each merchant has what a real one gets from the merchant portal: a merchant API key pair
and certificate serial (the client signs with it), an APIv3 key, and a WeChat Pay platform
key, published both as a public key with a ``PUB_KEY_ID_...`` and as a self-signed
platform certificate. ``mode`` says which one the simulator signs with by default.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from wxpay.certificates import certificate_serial
from wxpay.verifying import Verifier, public_key_pem

Mode = Literal["public_key", "certificate"]


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


public_pem = public_key_pem
"""The PEM of a (private key's) public key: :func:`wxpay.verifying.public_key_pem`."""


def self_signed_certificate(
    key: rsa.RSAPrivateKey, common_name: str, serial: int, *, days: int = 1825
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.now(UTC) - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


@dataclass
class PlatformKey:
    """One WeChat Pay signing key with its certificate."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def serial(self) -> str:
        return certificate_serial(self.certificate)


@dataclass
class SimMerchant:
    """A merchant id as the simulator knows it, with both halves of its key material."""

    mchid: str
    appid: str
    api_v3_key: str
    merchant_key: rsa.RSAPrivateKey
    merchant_serial: str
    public_key_id: str
    platform_keys: list[PlatformKey]
    mode: Mode = "public_key"
    fee_rate_bp: int = 60  # basis points of a percent: 60 → 0.60 %
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SimMerchant(mchid={self.mchid!r}, appid={self.appid!r}, mode={self.mode!r})"

    @property
    def platform(self) -> PlatformKey:
        """The current platform key (the newest); older ones stay listed after a rotation."""
        return self.platform_keys[-1]

    def signing_identity(self, requested: str | None = None) -> tuple[str, rsa.RSAPrivateKey]:
        """(serial, key) to sign with.

        During the certificate → public-key migration WeChat Pay signs an API answer with the
        kind of key the request's Wechatpay-Serial names (spec §2.5): the public key (the first
        platform key) for a ``PUB_KEY_ID_...``, the newest platform certificate for a
        certificate serial; without the header, the merchant's mode decides.
        """
        if requested == self.public_key_id or (requested is None and self.mode == "public_key"):
            return self.public_key_id, self.platform_keys[0].key
        if requested is not None and all(requested != p.serial for p in self.platform_keys):
            return self.signing_identity(None)
        return self.platform.serial, self.platform.key

    def verifier(self, **kw: Any) -> Verifier:
        """A verifier holding what this merchant downloaded from the portal (public-key mode)."""
        return Verifier.from_public_key(self.public_key_id, public_pem(self.platform_keys[0].key), **kw)

    def client_kwargs(self, *, clock: Callable[[], float] | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`wxpay.Client` acting as this merchant; ``clock`` (Unix seconds) signs
        requests and judges answers' timestamps (default: the client's, the wall clock)."""
        kw: dict[str, Any] = {
            "mchid": self.mchid,
            "serial_no": self.merchant_serial,
            "private_key": self.merchant_key,
            "api_v3_key": self.api_v3_key,
        }
        timing = {} if clock is None else {"clock": clock}
        if self.mode == "public_key":
            kw["verifier"] = self.verifier(**timing)
        else:
            kw["certificates"] = True
        return kw | timing

    def export(self, directory: str | Path) -> Path:
        """Write the merchant's credentials as a real merchant would hold them (test material only)."""
        target = Path(directory) / self.mchid
        target.mkdir(parents=True, exist_ok=True)
        (target / "apiclient_key.pem").write_bytes(private_pem(self.merchant_key))
        (target / "apiclient_key.pem").chmod(0o600)
        (target / "wechatpay_public_key.pem").write_bytes(public_pem(self.platform_keys[0].key))
        (target / "apiv3_key.txt").write_text(self.api_v3_key)
        (target / "apiv3_key.txt").chmod(0o600)
        meta = {
            "mchid": self.mchid,
            "appid": self.appid,
            "merchant_serial_no": self.merchant_serial,
            "wechatpay_public_key_id": self.public_key_id,
            "mode": self.mode,
            "fee_rate_bp": self.fee_rate_bp,
            "note": "simulator test credentials; not real",
        }
        (target / "merchant.json").write_text(json.dumps(meta, indent=2))
        return target


def new_merchant(
    mchid: str,
    appid: str,
    *,
    rng: random.Random | None = None,
    mode: Mode = "public_key",
    fee_rate_bp: int = 60,
    name: str = "",
) -> SimMerchant:
    """Generate a merchant with fresh RSA-2048 keys; ids and the APIv3 key come from ``rng``."""
    rng = rng or random.Random()  # noqa: S311 - simulator data, not security
    api_v3_key = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
    merchant_serial = "".join(rng.choice("0123456789ABCDEF") for _ in range(40))
    public_key_id = "PUB_KEY_ID_01" + mchid + "".join(rng.choice(string.digits) for _ in range(34 - 2 - len(mchid)))
    platform = new_rsa_key()
    certificate = self_signed_certificate(platform, f"WeChat Pay simulator {mchid}", rng.getrandbits(159) | 1 << 158)
    return SimMerchant(
        mchid=mchid,
        appid=appid,
        api_v3_key=api_v3_key,
        merchant_key=new_rsa_key(),
        merchant_serial=merchant_serial,
        public_key_id=public_key_id,
        platform_keys=[PlatformKey(platform, certificate)],
        mode=mode,
        fee_rate_bp=fee_rate_bp,
        name=name,
    )


def merchant_like(template: SimMerchant, mchid: str, *, rng: random.Random, fee_rate_bp: int = 60) -> SimMerchant:
    """Another merchant with ``template``'s key pairs and certificate (new ids and APIv3 key): thousands of
    merchants for a load test without generating thousands of RSA keys. Never for anything but tests."""
    api_v3_key = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
    merchant_serial = "".join(rng.choice("0123456789ABCDEF") for _ in range(40))
    public_key_id = "PUB_KEY_ID_01" + mchid + "".join(rng.choice(string.digits) for _ in range(34 - 2 - len(mchid)))
    return SimMerchant(
        mchid=mchid,
        appid=template.appid,
        api_v3_key=api_v3_key,
        merchant_key=template.merchant_key,
        merchant_serial=merchant_serial,
        public_key_id=public_key_id,
        platform_keys=list(template.platform_keys),
        mode=template.mode,
        fee_rate_bp=fee_rate_bp,
        name=template.name,
    )


def rotate_platform_key(merchant: SimMerchant, rng: random.Random) -> PlatformKey:
    """Issue a new platform certificate; the old one stays listed (overlap, as WeChat does)."""
    key = new_rsa_key()
    cert = self_signed_certificate(key, f"WeChat Pay simulator {merchant.mchid}", rng.getrandbits(159) | 1 << 158)
    merchant.platform_keys.append(PlatformKey(key, cert))
    return merchant.platform_keys[-1]
