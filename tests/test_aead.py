"""AEAD_AES_256_GCM with the APIv3 key: the spec's known-answer vector and its failures."""

from __future__ import annotations

import base64

import pytest

from wxpay import aead
from wxpay.errors import ConfigurationError, DecryptionError

KEY = "0123456789abcdef0123456789abcdef"
NONCE = "a1b2c3d4e5f6"
AAD = "transaction"
PLAINTEXT = b'{"combine_appid":"wxd678efh567hg6787","combine_mchid":"1900000100","combine_out_trade_no":"C20250310001"}'
CIPHERTEXT = (
    "XB6Me1HaaUrlw9QMwY2V8i2L3+gUQwWXJxX7PK5YDqTTu7v6QiBEV2dS5f88ZgHudUlMLXc5BBuV6pzByXOJNCYya3HdJLNPzzy/"
    "cH2eWC7vBU3xKCq0jTKxlKW/QGZcj0QkQwSckcpeXTneQjL203ScaWb3CyTzKg=="
)


def test_known_answer_vector_from_the_spec():
    assert len(PLAINTEXT) == 105
    assert len(base64.b64decode(CIPHERTEXT)) == 121
    assert aead.decrypt(KEY, NONCE, CIPHERTEXT, AAD) == PLAINTEXT
    assert aead.encrypt(KEY, NONCE, PLAINTEXT, AAD) == CIPHERTEXT


@pytest.mark.parametrize(
    ("key", "nonce", "aad"),
    [("0123456789abcdef0123456789abcdeF", NONCE, AAD), (KEY, "a1b2c3d4e5f7", AAD), (KEY, NONCE, "certificate")],
)
def test_any_changed_input_fails_the_tag(key, nonce, aad):
    with pytest.raises(DecryptionError) as info:
        aead.decrypt(key, nonce, CIPHERTEXT, aad)
    assert key not in str(info.value)


def test_tampered_ciphertext_fails():
    raw = bytearray(base64.b64decode(CIPHERTEXT))
    raw[10] ^= 1
    with pytest.raises(DecryptionError):
        aead.decrypt(KEY, NONCE, base64.b64encode(bytes(raw)).decode(), AAD)


def test_malformed_base64_is_a_decryption_error():
    with pytest.raises(DecryptionError):
        aead.decrypt(KEY, NONCE, "not base64!", AAD)


def test_key_must_be_32_bytes():
    with pytest.raises(ConfigurationError):
        aead.decrypt(KEY[:31], NONCE, CIPHERTEXT, AAD)
