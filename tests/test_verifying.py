"""Verification of signed answers and callbacks: each bad input has its own exception."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from wxpay.errors import (
    ConfigurationError,
    MissingSignatureError,
    SignatureMismatchError,
    SignatureProbeError,
    TimestampOutOfWindowError,
    UnknownSerialError,
    UnsupportedAlgorithmError,
    VerificationError,
)
from wxpay.signing import response_message, sign
from wxpay.sim.keys import public_pem
from wxpay.verifying import Verifier

NOW = 1_764_000_000
KEY_ID = "PUB_KEY_ID_0119000001002025112600000000001"


@pytest.fixture(scope="module")
def platform() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def verifier(platform) -> Verifier:
    return Verifier.from_public_key(KEY_ID, public_pem(platform), clock=lambda: NOW)


def headers(key, body: bytes, *, ts: int = NOW, serial: str = KEY_ID, **extra) -> dict[str, str]:
    nonce = "e0c6c2f3f09a4f3ba7f47e6a5ad7a2d1"
    base = {
        "Wechatpay-Timestamp": str(ts),
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": sign(key, response_message(ts, nonce, body)),
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        "Request-ID": "08F5B8C2B506102C18FDDFEEA30620BE821E28EDC405-0",
    }
    base.update(extra)
    return base


BODY = b'{"code_url":"weixin://wxpay/bizpayurl/up?pr=NwY5Mz9&groupid=00"}'


def test_a_good_signature_verifies(verifier, platform):
    signed = verifier.verify(headers(platform, BODY), BODY)
    assert signed.serial == KEY_ID
    assert signed.request_id.endswith("-0")


def test_an_empty_204_body_verifies(verifier, platform):
    verifier.verify(headers(platform, b""), b"")


def test_header_names_are_case_insensitive(verifier, platform):
    verifier.verify({k.lower(): v for k, v in headers(platform, BODY).items()}, BODY)


def test_tampered_body(verifier, platform):
    with pytest.raises(SignatureMismatchError) as info:
        verifier.verify(headers(platform, BODY), BODY.replace(b"NwY5", b"NwY6"))
    assert info.value.serial == KEY_ID
    assert info.value.request_id


def test_wrong_key(verifier, other):
    with pytest.raises(SignatureMismatchError):
        verifier.verify(headers(other, BODY), BODY)


@pytest.mark.parametrize("skew", [300, -300, 3600])
def test_stale_or_future_timestamp(verifier, platform, skew):
    with pytest.raises(TimestampOutOfWindowError) as info:
        verifier.verify(headers(platform, BODY, ts=NOW - skew), BODY)
    assert info.value.timestamp == NOW - skew


def test_just_inside_the_window(verifier, platform):
    verifier.verify(headers(platform, BODY, ts=NOW - 299), BODY)


def test_signtest_probe_is_rejected_with_its_own_error(verifier, other):
    probe = "WECHATPAY/SIGNTEST/" + base64.b64encode(b"x" * 48).decode()
    with pytest.raises(SignatureProbeError):
        verifier.verify(
            headers(other, BODY, **{"Wechatpay-Signature": probe}),
            BODY,
        )


def test_unknown_serial(verifier, platform):
    with pytest.raises(UnknownSerialError) as info:
        verifier.verify(headers(platform, BODY, serial="5157F09EFDC096DE15EBE81A47057A7232F1B8E1"), BODY)
    assert info.value.serial == "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"


@pytest.mark.parametrize(
    "missing", ["Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"]
)
def test_missing_headers(verifier, platform, missing):
    sent = headers(platform, BODY)
    del sent[missing]
    with pytest.raises(MissingSignatureError, match=missing):
        verifier.verify(sent, BODY)


def test_unsupported_signature_type(verifier, platform):
    with pytest.raises(UnsupportedAlgorithmError):
        verifier.verify(headers(platform, BODY, **{"Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}), BODY)


def test_absent_signature_type_means_rsa(verifier, platform):
    sent = headers(platform, BODY)
    del sent["Wechatpay-Signature-Type"]
    verifier.verify(sent, BODY)


def test_garbage_signature_is_a_mismatch(verifier, platform):
    with pytest.raises(SignatureMismatchError):
        verifier.verify(headers(platform, BODY, **{"Wechatpay-Signature": "%%%"}), BODY)


def test_every_failure_is_a_verification_error():
    for cls in (
        MissingSignatureError,
        SignatureMismatchError,
        SignatureProbeError,
        UnknownSerialError,
        TimestampOutOfWindowError,
        UnsupportedAlgorithmError,
    ):
        assert issubclass(cls, VerificationError)


def test_rotation_is_data(platform, other):
    verifier = Verifier.from_public_key(KEY_ID, public_pem(platform), clock=lambda: NOW)
    verifier.add("NEWCERT01", other.public_key())
    verifier.verify(headers(other, BODY, serial="NEWCERT01"), BODY)
    verifier.replace_certificates({})
    assert verifier.serials == [KEY_ID]
    assert verifier.preferred_serial == KEY_ID


def test_public_key_ids_must_look_like_one(platform):
    with pytest.raises(ConfigurationError):
        Verifier.from_public_key("5157F09E", public_pem(platform))
