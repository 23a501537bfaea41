"""Golden tests for the string to sign and the Authorization header, and an independent check
of our RSA signatures against the openssl command line."""

from __future__ import annotations

import base64
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from wxpay.errors import ConfigurationError, MalformedAuthorizationError
from wxpay.signing import (
    Signer,
    authorization_header,
    load_private_key,
    new_nonce,
    parse_authorization,
    request_message,
    response_message,
    sign,
)
from wxpay.sim.keys import private_pem, public_pem
from wxpay.verifying import Verifier

NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_request_message_for_a_get_ends_with_an_empty_body_line():
    message = request_message(
        "get", "/v3/bill/tradebill?bill_date=2025-03-10&bill_type=ALL&tar_type=GZIP", 1741572000, NONCE
    )
    assert message == (
        b"GET\n/v3/bill/tradebill?bill_date=2025-03-10&bill_type=ALL&tar_type=GZIP\n1741572000\n"
        b"593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
    )


def test_request_message_keeps_body_bytes_and_target_verbatim():
    body = '{"description":"课程","n":1}'
    message = request_message("POST", "/v3/x/A%20b?q=%E4%B8%AD", "1741572000", "n1", body)
    assert message == b"POST\n/v3/x/A%20b?q=%E4%B8%AD\n1741572000\nn1\n" + body.encode() + b"\n"


def test_response_message_of_an_empty_204_body():
    assert response_message(1741572000, "abc", b"") == b"1741572000\nabc\n\n"


def test_authorization_header_golden():
    header = authorization_header(
        mchid="1900000100",
        serial_no="3775B6A45ACD588826D15E583A95F5DD2F3A1234",
        timestamp=1741572000,
        nonce=NONCE,
        signature="c2ln",
    )
    assert header == (
        'WECHATPAY2-SHA256-RSA2048 mchid="1900000100",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",'
        'timestamp="1741572000",serial_no="3775B6A45ACD588826D15E583A95F5DD2F3A1234",signature="c2ln"'
    )


def test_signer_with_pinned_clock_and_nonce_is_reproducible(key):
    signer = Signer("1900000100", "ABCDEF", key, clock=lambda: 1741572000.9, nonce=lambda: NONCE)
    target = "/v3/bill/tradebill?bill_date=2025-03-10&bill_type=ALL&tar_type=GZIP"
    header = signer.authorization("GET", target)
    expected_signature = sign(key, request_message("GET", target, 1741572000, NONCE))
    assert header == authorization_header(
        mchid="1900000100", serial_no="ABCDEF", timestamp=1741572000, nonce=NONCE, signature=expected_signature
    )
    assert signer.authorization("GET", target) == header  # PKCS#1 v1.5 is deterministic
    assert "PRIVATE" not in repr(signer)
    assert "hidden" in repr(signer)


def test_parse_authorization_accepts_any_pair_order():
    python_sdk_order = (
        'WECHATPAY2-SHA256-RSA2048 mchid="1900000100",nonce_str="n",signature="s==",'
        'timestamp="1741572000",serial_no="AB12"'
    )
    parsed = parse_authorization(python_sdk_order)
    assert parsed.mchid == "1900000100"
    assert parsed.timestamp == 1741572000
    assert parsed.serial_no == "AB12"
    assert parsed.signature == "s=="


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        'Basic mchid="1"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1900000100",nonce_str="n",timestamp="1",serial_no="A"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="soon",serial_no="A",signature="s"',
        "WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str=n,timestamp=1,serial_no=A,signature=s",
        'WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2",nonce_str="n",timestamp="1",serial_no="A",signature="s"',
    ],
)
def test_parse_authorization_rejects_malformed_headers(value):
    with pytest.raises(MalformedAuthorizationError):
        parse_authorization(value)


def test_nonce_shape():
    nonces = {new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 32 and n.isalnum() and n.isascii() for n in nonces)
    assert all(len(new_nonce(n)) == n for n in (1, 16, 31))


def test_unreadable_private_key_error_does_not_quote_the_key(key):
    pem = private_pem(key).decode()
    broken = pem.replace("MII", "XXX", 1)
    with pytest.raises(ConfigurationError) as info:
        load_private_key(broken)
    assert "PRIVATE" not in str(info.value)
    assert broken[40:80] not in str(info.value)


def test_our_signature_verifies_with_openssl_and_openssl_signature_verifies_with_ours(key, tmp_path):
    message = request_message("POST", "/v3/combine-transactions/native", 1741572000, NONCE, '{"a":"中文"}')
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "key.pem").write_bytes(private_pem(key))
    (tmp_path / "pub.pem").write_bytes(public_pem(key))

    ours = sign(key, message)
    (tmp_path / "ours.sig").write_bytes(base64.b64decode(ours))
    check = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            tmp_path / "pub.pem",
            "-signature",
            tmp_path / "ours.sig",
            tmp_path / "msg",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0
    assert "Verified OK" in check.stdout

    subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-sign",
            tmp_path / "key.pem",
            "-out",
            tmp_path / "theirs.sig",
            tmp_path / "msg",
        ],
        check=True,
    )
    theirs = base64.b64encode((tmp_path / "theirs.sig").read_bytes()).decode()
    assert theirs == ours  # RSASSA-PKCS1-v1_5 is deterministic: same key, same message, same bytes
    Verifier({"SERIAL": public_pem(key)}).verify_message("SERIAL", message, theirs)

    (tmp_path / "tampered").write_bytes(message.replace(b"native", b"natives"))
    check = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            tmp_path / "pub.pem",
            "-signature",
            tmp_path / "ours.sig",
            tmp_path / "tampered",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode != 0
