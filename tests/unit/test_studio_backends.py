"""What the studio's Backends view says was measured, for every evidence kind the verifier
carries (SEV-SNP, TDX, NVIDIA GPUs, tokens), and the signed release a verdict rests on; never
a token itself, never a URL's user info. The service is test_verifier.py's, behind its fake
transport."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.attestation.transport import Response
from gateway.attestation.verifier import Standing
from gateway.policy.loader import load_policy
from gateway.studio.backends_view import measured, shown_url
from tests.attestation_ca import MEASUREMENT, MRTD
from tests.sigstore_instance import PrivateSigstore
from tests.unit.attestation.test_releases import RELEASE, good, policy, write
from tests.unit.attestation.test_verifier import (
    LEVEL,
    POLICY,
    SNP,
    T0,
    VENDORS,
    Answer,
    document,
    world,
)


def held(standing: Standing | None) -> Standing:
    assert standing is not None
    assert standing.evidence is not None, standing.error
    return standing


def snp_gpu_and_token() -> Answer:
    def answer(bound: bytes) -> Response:
        token = VENDORS.token(bound, now=T0)
        return Response(200, orjson.dumps(VENDORS.evidence(bound, gpu=True, tokens=(token,))))
    return answer


async def test_snp_with_a_gpu_and_a_token() -> None:
    async with world(snp_gpu_and_token(), {**SNP, "nvidia-gpu": {"count": 2}}) as w:
        await w.attested()
        standing = held(w.service.standing("tee"))
        [level] = standing.levels
        assert level.problems == ("1 GPU(s) attested, the level requires 2",)
        assert standing.evidence is not None
        shown = measured(standing.evidence)
    assert shown["kinds"] == ["SEV-SNP", "NVIDIA GPU x1", "token"]
    assert shown["sev_snp"]["measurement"] == MEASUREMENT.hex()
    assert shown["sev_snp"]["guest_policy"].startswith("0x")
    assert shown["gpu_count"] == 1
    [gpu] = shown["gpus"]
    assert gpu["index"] == 0
    assert gpu["certificate_serial"]
    assert gpu["measurements"]
    assert shown["tokens"] == 1
    assert shown["report_data"] == standing.evidence.expected_nonce
    text = orjson.dumps(shown).decode()
    assert standing.evidence.tokens[0] not in text  # counted, never shown
    assert "eyJ" not in text


async def test_tdx() -> None:
    async with world(document(kind="tdx", measurement=MRTD), {"tdx": {"mrtd": [MRTD.hex()]}}
                     ) as w:
        await w.attested()
        standing = held(w.service.standing("tee"))
        assert w.meets()
        assert standing.evidence is not None
        shown = measured(standing.evidence)
    assert shown["kinds"] == ["TDX"]
    assert shown["tdx"]["mrtd"] == MRTD.hex()
    assert shown["sev_snp"] is None
    assert shown["endorsements_until"] is not None  # Intel's collateral's nextUpdate


async def test_a_verdict_resting_on_a_signed_release_names_it(tmp_path: Path) -> None:
    sigstore = PrivateSigstore()
    write(tmp_path, good(sigstore, snp=MEASUREMENT.hex()), sigstore)
    level = load_policy(policy(tmp_path)).policy.trust_levels["released-cpu"]
    async with world(document()) as w:
        await w.attested()
        w.levels[0] = (POLICY, LEVEL, level)
        w.service.policies_changed()
        await w.attested(2)
        standing = held(w.service.standing("tee"))
    assert standing.releases == (RELEASE,)


def test_urls_are_shown_without_what_may_carry_a_credential() -> None:
    assert shown_url("https://user:secret@tee.test:8443/v1?key=abc#x") == \
        "https://tee.test:8443/v1"
