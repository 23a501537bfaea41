"""A merchant's keys for re-verifying its callbacks, in a form that crosses process boundaries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wxpay.errors import ConfigurationError
from wxpay.verifying import MAX_CLOCK_SKEW, Verifier, load_public_key

__all__ = ["MerchantKeys"]


@dataclass(frozen=True, repr=False)
class MerchantKeys:
    """What re-verifying one merchant's callbacks takes, in a form that crosses process boundaries.

    ``public_keys`` maps each ``Wechatpay-Serial`` that may appear in the log — the WeChat Pay
    public-key id (``PUB_KEY_ID_...``) and/or platform-certificate serials, including rotated-out
    ones — to its PEM (public key or certificate). ``api_v3_key`` decrypts the resources.
    Verifiers are built from these once per worker process (key objects do not pickle).
    """

    api_v3_key: bytes | str
    public_keys: Mapping[str, bytes | str]
    max_skew: int = MAX_CLOCK_SKEW

    def __post_init__(self) -> None:
        key = self.api_v3_key.encode("utf-8") if isinstance(self.api_v3_key, str) else bytes(self.api_v3_key)
        if len(key) != 32:
            raise ConfigurationError(f"the APIv3 key must be 32 bytes, got {len(key)}")
        if not self.public_keys:
            raise ConfigurationError("MerchantKeys needs at least one WeChat Pay public key or certificate")
        keys = {str(serial): pem for serial, pem in self.public_keys.items()}
        for pem in keys.values():
            load_public_key(pem)  # ConfigurationError now, not in a worker
        object.__setattr__(self, "public_keys", keys)

    @classmethod
    def from_public_key(cls, key_id: str, pem: bytes | str, api_v3_key: bytes | str) -> MerchantKeys:
        """Public-key mode: one ``PUB_KEY_ID_...`` and its PEM."""
        return cls(api_v3_key, {key_id: pem})

    def verifier(self, clock) -> Verifier:
        return Verifier(self.public_keys, clock=clock, max_skew=self.max_skew)

    def __repr__(self) -> str:
        return f"MerchantKeys(serials={sorted(self.public_keys)!r}, api_v3_key='***')"
