"""The client helper's pin: a connection is bound to the key it presented at its handshake, and
writes only while that key is the attested one; another key, a failed verification, or a
verdict for another key stops it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.attestation.binding import spki_sha256
from gateway.client.attested import GatewayKeyChanged, GatewayNotTrusted, Pin
from gateway.client.verify import GatewayVerdict
from tests.attestation_ca import self_signed


class Handshake:
    """What the SSL object of a connection says its peer presented."""

    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool) -> bytes:
        return self.der


def certificate() -> bytes:
    return self_signed("gw")[1].public_bytes(serialization.Encoding.DER)


def proved(der: bytes) -> GatewayVerdict:
    return GatewayVerdict(True, spki_sha256(der), until=2e9)


def test_a_connection_writes_only_while_its_key_is_the_attested_one() -> None:
    first, second = certificate(), certificate()
    pin = Pin(lambda: 1e9)
    pin.hold(proved(first), max_age_s=60)
    key = pin.check(Handshake(first))
    pin.still(key)
    with pytest.raises(GatewayKeyChanged):
        pin.check(Handshake(second))  # and the verdict is gone: verified again next time
    assert pin.current() is None
    pin.hold(proved(second), max_age_s=60)
    with pytest.raises(GatewayKeyChanged):
        pin.still(key)  # pooled to the first key: not written on any more


def test_a_refused_verdict_drops_the_pin_and_says_why() -> None:
    der = certificate()
    pin = Pin(lambda: 1e9)
    pin.hold(proved(der), max_age_s=60)
    with pytest.raises(GatewayNotTrusted, match="did not prove itself: measurement x"):
        pin.hold(GatewayVerdict(False, None, 0.0, reasons=["measurement x"]), max_age_s=60)
    with pytest.raises(GatewayKeyChanged):
        pin.check(Handshake(der))


def test_the_pin_lapses_at_max_age_or_the_verdict_whichever_first() -> None:
    now = [1e9]
    pin = Pin(lambda: now[0])
    pin.hold(GatewayVerdict(True, b"k" * 32, until=1e9 + 30), max_age_s=60)
    assert pin.current() == b"k" * 32
    now[0] += 31
    assert pin.current() is None
