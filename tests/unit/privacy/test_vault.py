"""Numbered and keyed placeholders: numbered ones restart in every request; keyed ones hold for
a value across requests and keep different values apart."""

from __future__ import annotations

from gateway.privacy.vault import PLACEHOLDER, Vault

KEY = b"k" * 32


def test_numbered_placeholders_restart_in_every_request() -> None:
    assert Vault().placeholder("PERSON", "John Smith") == "<PERSON_1>"
    assert Vault().placeholder("PERSON", "Alice Jones") == "<PERSON_1>"


def test_keyed_placeholders_tell_people_apart_across_requests() -> None:
    john = Vault(key=KEY).placeholder("PERSON", "John Smith")
    alice = Vault(key=KEY).placeholder("PERSON", "Alice Jones")
    assert john != alice
    assert Vault(key=KEY).placeholder("PERSON", "John Smith") == john
    assert john.startswith("<PERSON_")
    assert len(john) == len("<PERSON_>") + 12


def test_keyed_placeholders_ignore_case_and_spacing_only() -> None:
    vault = Vault(key=KEY)
    john = vault.placeholder("PERSON", "John Smith")
    assert Vault(key=KEY).placeholder("PERSON", "JOHN  SMITH") == john
    assert Vault(key=KEY).placeholder("PERSON", "John Smyth") != john
    assert Vault(key=KEY).placeholder("LOCATION", "John Smith") != john  # the type counts too


def test_keyed_placeholders_depend_on_the_key() -> None:
    assert Vault(key=KEY).placeholder("EMAIL", "a@b.example") != \
        Vault(key=b"x" * 32).placeholder("EMAIL", "a@b.example")


def test_keyed_placeholders_still_restore_within_the_request() -> None:
    vault = Vault(key=KEY)
    placeholder = vault.placeholder("EMAIL", "zoe@example.org")
    assert vault.restore(f"write to {placeholder}") == "write to zoe@example.org"
    match = PLACEHOLDER.fullmatch(placeholder)
    assert match is not None
    assert not match.group(2).isdigit()


def test_a_digest_collision_in_one_request_gets_the_whole_digest() -> None:
    vault = Vault(key=KEY)
    first = vault.placeholder("PERSON", "John Smith")
    vault._values[first] = "someone else"  # as if another value had the same 48 bits
    del vault._by_value[("PERSON", "John Smith")]
    second = vault.placeholder("PERSON", "John Smith")
    assert second != first
    assert second.startswith(first[:-1])
