"""What the attestation service says it holds about a backend (`standing`, for the studio's
Backends view) is what it routes by: the same verdicts per (policy, level), with why a level is
not met, the last error, when it was and will be checked; and `attest_now` runs a fresh
attestation and returns when it has ended. Driven through the fake transport of
test_verifier.py."""

from __future__ import annotations

import orjson
import pytest

from gateway.attestation.transport import Response
from gateway.attestation.verifier import Standing
from tests.unit.attestation.test_verifier import (
    FAILURES,
    JWKS_URL,
    LEVEL,
    POLICY,
    SNP,
    T0,
    TOKEN,
    VENDORS,
    document,
    tokens,
    world,
)


def standing_of(service_standing: Standing | None) -> Standing:
    assert service_standing is not None
    return service_standing


async def test_a_met_level_is_shown_with_its_expiry_and_the_next_check() -> None:
    async with world(document()) as w:
        await w.attested()
        standing = standing_of(w.service.standing("tee"))
        assert standing.error is None
        assert standing.evidence is not None
        assert standing.evidence.snp is not None
        assert standing.source == "verified"
        [level] = standing.levels
        assert (level.policy, level.level) == (POLICY, LEVEL)
        assert level.until == T0 + 600  # the level's max_age_s
        assert level.problems == ()
        assert w.meets()  # what is shown is what requests are routed by
        assert standing.checked_at == T0
        assert standing.next_check_at == T0 + 300  # refresh_s, before the level lapses


async def test_a_level_not_met_says_why() -> None:
    async with world(document(measurement=bytes(48))) as w:
        await w.attested()
        standing = standing_of(w.service.standing("tee"))
        assert standing.evidence is not None  # the evidence verified: only the level fails
        [level] = standing.levels
        assert level.until is None
        assert level.problems == (f"measurement {bytes(48).hex()} is not allowed",)
        assert not w.meets()


async def test_a_lapsed_level_says_it_is_too_old() -> None:
    async with world(document()) as w:
        await w.attested()
        w.clock.now = T0 + 600
        [level] = standing_of(w.service.standing("tee")).levels
        assert level.until == T0 + 600
        assert level.problems == ("the evidence is older than the level's max_age_s (600)",)
        assert not w.meets()


async def test_a_token_level_names_each_tokens_problem() -> None:
    routes = {JWKS_URL: Response(200, orjson.dumps(VENDORS.jwks()))}
    async with world(tokens(iss="https://someone-else.test"), {**SNP, **TOKEN},
                     routes=routes) as w:
        await w.attested()
        [level] = standing_of(w.service.standing("tee")).levels
        assert level.until is None
        assert len(level.problems) == 1
        assert level.problems[0].startswith("token 0: ")


async def test_a_failed_attestation_shows_its_reason_and_no_verdict() -> None:
    async with world(FAILURES["server error"]) as w:
        await w.attested()
        standing = standing_of(w.service.standing("tee"))
        assert standing.error == "evidence endpoint answered 500"
        assert standing.evidence is None
        assert standing.source is None
        [level] = standing.levels
        assert level.until is None
        assert level.problems == ()  # the error says why: there is no evidence to judge
        assert standing.next_check_at == T0 + 5  # RETRY_S after a failure


async def test_attest_now_runs_a_fresh_attestation_and_waits_for_it() -> None:
    async with world(document()) as w:
        await w.attested()
        w.clock.now = T0 + 42
        await w.service.attest_now("tee", timeout_s=10)
        assert len(w.network.nonces) == 2  # asked again, with a fresh nonce
        standing = standing_of(w.service.standing("tee"))
        assert standing.checked_at == T0 + 42
        assert standing.levels[0].until == T0 + 42 + 600
        w.network.answer = FAILURES["unreachable"]
        await w.service.attest_now("tee", timeout_s=10)
        failed = standing_of(w.service.standing("tee"))
        assert failed.error == "timed out"
        assert not w.meets()


async def test_a_backend_without_attestation_has_no_standing() -> None:
    async with world(document()) as w:
        assert w.service.standing("elsewhere") is None
        with pytest.raises(KeyError):
            await w.service.attest_now("elsewhere", timeout_s=1)
