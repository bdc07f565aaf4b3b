from __future__ import annotations

import pytest

from gateway.privacy.patterns import PatternDetector, luhn, valid_iban


def found(text: str) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start:s.end]) for s in PatternDetector().detect(text)]


@pytest.mark.parametrize(("text", "entity", "value"), [
    ("mail a.b+c@mail.example.co.uk now", "EMAIL", "a.b+c@mail.example.co.uk"),
    ("card 4111-1111-1111-1111.", "CREDIT_CARD", "4111-1111-1111-1111"),
    ("amex 378282246310005", "CREDIT_CARD", "378282246310005"),
    ("iban DE89 3704 0044 0532 0130 00", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("iban GB82WEST12345698765432", "IBAN", "GB82WEST12345698765432"),
    ("ssn 536-22-1234", "US_SSN", "536-22-1234"),
    ("ip 192.168.10.200", "IP_ADDRESS", "192.168.10.200"),
    ("ip fe80::1ff:fe23:4567:890a", "IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
    ("call +1-202-555-0173x123", "PHONE", "+1-202-555-0173x123"),
    ("call (202) 555-0173", "PHONE", "(202) 555-0173"),
    ("call +33 (0)1 42 68 53 00", "PHONE", "+33 (0)1 42 68 53 00"),
    ("call 030 1234567", "PHONE", "030 1234567"),
    ("AKIAIOSFODNN7EXAMPLE", "SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ("ghp_" + "a1" * 18, "SECRET", "ghp_" + "a1" * 18),
    ("xoxb-1234567890-abcdefghij", "SECRET", "xoxb-1234567890-abcdefghij"),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "SECRET", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("AIza" + "SyD" + "x" * 32, "SECRET", "AIzaSyD" + "x" * 32),
    ("redis://default:Pa55w0rd!@cache:6379", "SECRET", "Pa55w0rd!"),
    ('"password": "correct-horse-battery"', "SECRET", "correct-horse-battery"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "SECRET",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
])
def test_finds(text: str, entity: str, value: str) -> None:
    assert (entity, value) in found(text)


@pytest.mark.parametrize("text", [
    "version 1.2.3.4a and 10.0", "on 2024-01-15 at 12:30:45", "paid 1,500,000 dollars",
    "card 4111 1111 1111 1112", "order 12345", "iban GB00WEST12345698765432",
    "ssn 000-12-3456", "ip 999.1.1.1", "see https://example.com/a:b", "ratio 3:4:5",
])
def test_does_not_find(text: str) -> None:
    assert found(text) == []


def test_pem_private_key_is_one_secret() -> None:
    pem = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n"
           "-----END OPENSSH PRIVATE KEY-----")
    assert found(f"key:\n{pem}\nthanks") == [("SECRET", pem)]


def test_checksums() -> None:
    assert luhn("4111111111111111")
    assert not luhn("4111111111111112")
    assert valid_iban("gb82 west 1234 5698 7654 32")
