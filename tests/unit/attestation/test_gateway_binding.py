"""The gateway's own evidence binding and how a client reads the policies it states: another
label than a backend's (neither passes for the other), the policy set digest as documented, and
a stated list that does not hash to the signed digest refused."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest

from gateway.attestation.binding import (
    GATEWAY_BINDING,
    binding,
    gateway_binding,
    policy_set_digest,
)
from gateway.attestation.levels import TrustLevel
from gateway.client.verify import Expected, normalised_digest, stated_policies
from gateway.errors import EvidenceError

NONCE, KEY = bytes(range(32)), bytes(range(32, 64))
POLICIES = [("strict", "sha256:" + "a" * 64), ("default", "sha256:" + "b" * 64)]


def test_the_policy_set_digest_is_what_the_docstring_says() -> None:
    listed = json.dumps([list(p) for p in POLICIES], separators=(",", ":")).encode()
    assert policy_set_digest(POLICIES) == "sha256:" + hashlib.sha256(listed).hexdigest()
    assert policy_set_digest(POLICIES) != policy_set_digest(POLICIES[::-1])  # order decides


def test_the_gateway_binding_covers_nonce_key_and_policies_under_its_own_label() -> None:
    digest = policy_set_digest(POLICIES)
    bound = gateway_binding(NONCE, KEY, digest)
    assert len(bound) == 64
    assert bound == hashlib.sha512(b"veil-gateway-attestation-v1\0" + NONCE + KEY
                                   + bytes.fromhex(digest[7:])).digest()
    assert bound != binding(NONCE, KEY)
    assert bound != gateway_binding(NONCE, KEY, policy_set_digest(POLICIES[:1]))
    assert bound != gateway_binding(bytes(32), KEY, digest)
    with pytest.raises(ValueError, match="64 hex digits"):
        gateway_binding(NONCE, KEY, "sha256:abcd")


def document(**changes: object) -> bytes:
    body: dict[str, object] = {
        "evidence": [], "binding": GATEWAY_BINDING, "policy_set_digest": policy_set_digest(
            POLICIES), "policies": [{"name": n, "digest": d} for n, d in POLICIES]}
    return orjson.dumps({**body, **changes})


def test_the_stated_policies_must_hash_to_the_signed_digest() -> None:
    stated, listed = stated_policies(document())
    assert stated == policy_set_digest(POLICIES)
    assert [p["name"] for p in listed] == ["strict", "default"]
    with pytest.raises(EvidenceError, match="do not hash"):  # a list edited to look better
        stated_policies(document(policies=[{"name": "strict", "digest": POLICIES[0][1]}]))


@pytest.mark.parametrize(("changes", "reason"), [
    ({"binding": "veil-attestation-v1"}, "not a gateway's evidence"),
    ({"policies": "strict"}, "needs policy_set_digest and policies"),
    ({"policy_set_digest": "sha256:12"}, "not a SHA-256 digest"),
])
def test_a_document_that_is_not_a_gateways_is_refused(changes: dict[str, object],
                                                       reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        stated_policies(document(**changes))


def test_digests_are_written_any_way_a_person_copies_them() -> None:
    digest = "sha256:" + "ab" * 32
    assert normalised_digest("AB" * 32) == normalised_digest(f" {digest} ") == digest
    with pytest.raises(ValueError, match="64 hex digits"):
        normalised_digest("sha256:" + "zz" * 32)


def test_a_client_expects_some_policy_set() -> None:
    level = TrustLevel.model_validate({"sev-snp": {"measurements": ["00" * 48]}})
    with pytest.raises(ValueError, match="at least one policy set digest"):
        Expected.of("l", level, [])
    assert Expected.of("l", level, ["AB" * 32]).policy_digests == {"sha256:" + "ab" * 32}
