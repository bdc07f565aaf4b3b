"""A node with several GPUs: one nvidia-gpu part per GPU, each verified (chain, signature,
nonce, OCSP), every one of them required to meet the level, the one that does not named by its
index and certificate serial, and the same GPU twice refused. The test NVIDIA's devices are
distinct GPUs, each with its own attestation key."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest

from gateway.attestation import evidence as evidence_module
from gateway.attestation.evidence import MAX_GPUS, Evidence, EvidenceVerifier, Fetched
from gateway.attestation.levels import RimSource, TrustLevel
from gateway.attestation.nvidia import GpuEvidence, certificate_serial
from gateway.attestation.verdicts import gpu_level_problems, level_met
from gateway.errors import EvidenceError
from tests.attestation_ca import CRL_NEXT_UPDATE, Vendors
from tests.unit.attestation.test_revocation import Issued

VENDORS = Vendors()
AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
BOUND = bytes(range(64))
GOOD = b"\x11" * 48


def serial(device: int) -> str:
    return certificate_serial(VENDORS.nvidia.device(device)[1])


def named(device: int) -> str:
    """How messages name the test NVIDIA's GPU `device` when it is part `device`."""
    return rf"GPU {device} \(certificate serial {serial(device)}\)"


def document(gpus: int, **replaced: dict[str, Any]) -> dict[str, Any]:
    """A node's evidence: the CPU report and `gpus` good GPUs; `replaced` ("p3": part) puts
    another part in GPU 3's place."""
    made = VENDORS.evidence(BOUND, gpu=True, gpus=gpus)
    parts = made["evidence"]
    for key, part in replaced.items():
        parts[1 + int(key[1:])] = part
    return made


def issued() -> Issued:
    return Issued(crls={"vcek": VENDORS.amd.crl()})


async def verify(made: Mapping[str, Any], source: Issued | None = None) -> Evidence:
    verifier = EvidenceVerifier(VENDORS.roots(), source or issued(), AT.timestamp)
    return await verifier.verify(Fetched(orjson.dumps(made), BOUND, bytes(32)))


def level(**gpu: Any) -> TrustLevel:
    return TrustLevel.model_validate({"max_age_s": 3600, "nvidia-gpu": {
        "measurements": {1: [GOOD.hex()]}, **gpu}})


def met(evidence: Evidence, wanted: TrustLevel) -> float | None:
    return level_met(evidence, wanted, lambda _: None, AT.timestamp())


@pytest.mark.parametrize("gpus", [2, 8])
async def test_every_gpu_good_meets_the_level(gpus: int) -> None:
    evidence = await verify(document(gpus))
    assert [gpu.index for gpu in evidence.gpus] == list(range(gpus))
    assert [gpu.serial for gpu in evidence.gpus] == [serial(i) for i in range(gpus)]
    assert all(gpu.evidence.requester_nonce == BOUND[:32] for gpu in evidence.gpus)
    assert met(evidence, level()) == AT.timestamp() + 3600
    assert met(evidence, level(count=gpus)) == AT.timestamp() + 3600
    assert gpu_level_problems(evidence, level(), AT.timestamp()) == []


def revoked(device: int) -> dict[str, Any]:
    cert = VENDORS.nvidia.device(device)[1]
    return VENDORS.nvidia.part(BOUND[:32], device, ocsp=VENDORS.nvidia.ocsp(
        status="revoked", cert=cert))


def another_nonce(device: int) -> dict[str, Any]:
    return VENDORS.nvidia.part(bytes(32), device)


def broken_signature(device: int) -> dict[str, Any]:
    part = VENDORS.nvidia.part(BOUND[:32], device)
    raw = bytearray.fromhex(part["evidence"])
    raw[-1] ^= 1
    return {**part, "evidence": raw.hex()}


def chain_of_another(device: int) -> dict[str, Any]:
    """GPU `device`'s evidence with the chain of GPU 0: its key did not sign it."""
    part = VENDORS.nvidia.part(BOUND[:32], device)
    return {**part, "certificates": VENDORS.nvidia.chain_pem().decode()}


BAD_GPU: dict[str, tuple[Callable[[int], dict[str, Any]], str]] = {
    "revoked": (revoked, r"certificate 'Test GH100 attestation key' is revoked"),
    "another nonce": (another_nonce, "the request nonce is not this gateway's"),
    "broken signature": (broken_signature, "the measurements' signature does not verify"),
}


@pytest.mark.parametrize("case", sorted(BAD_GPU))
async def test_one_bad_gpu_of_eight_refuses_the_node_naming_it(case: str) -> None:
    make, reason = BAD_GPU[case]
    with pytest.raises(EvidenceError, match=rf"^nvidia-gpu: {named(5)}: {reason}") as refused:
        await verify(document(8, p5=make(5)))
    assert str(refused.value).count("nvidia-gpu: GPU") == 1  # the seven others are good


async def test_every_bad_gpu_is_named_none_hidden_by_another() -> None:
    with pytest.raises(EvidenceError) as refused:
        await verify(document(8, p2=revoked(2), p6=broken_signature(6)))
    problems = str(refused.value).split("; ")
    assert len(problems) == 2
    assert problems[0].startswith(f"nvidia-gpu: GPU 6 (certificate serial {serial(6)}): the "
                                  "measurements' signature")  # signatures first, then OCSP
    assert problems[1].startswith(f"nvidia-gpu: GPU 2 (certificate serial {serial(2)}): "
                                  "certificate 'Test GH100 attestation key' is revoked")


async def test_a_part_without_a_usable_chain_is_named_by_its_index() -> None:
    with pytest.raises(EvidenceError, match=r"^nvidia-gpu: GPU 3: the part needs hex"):
        await verify(document(4, p3={"format": "nvidia-gpu", "evidence": "zz"}))


async def test_a_wrong_measurement_on_one_gpu_fails_the_level_naming_that_gpu() -> None:
    bad = VENDORS.nvidia.part(BOUND[:32], 3, measurements={1: b"\x99" * 48})
    evidence = await verify(document(8, p3=bad))  # genuine and bound: it verifies
    assert met(evidence, level()) is None
    assert gpu_level_problems(evidence, level(), AT.timestamp()) == [
        f"GPU 3 (certificate serial {serial(3)}): GPU measurement 1 {'99' * 48} is not allowed"]


async def test_the_same_gpu_twice_is_refused() -> None:
    """Its part repeated, or its key under a second certificate: one GPU standing in for two."""
    again = VENDORS.nvidia.part(BOUND[:32], 1)
    with pytest.raises(EvidenceError, match=rf"^nvidia-gpu: GPU 2 \(certificate serial "
                                            rf"{serial(1)}\) is the same GPU as {named(1)}"):
        await verify(document(3, p2=again))
    key, leaf = VENDORS.nvidia.device(1)
    _, recertified = VENDORS.nvidia.certify(key)
    part = {**VENDORS.nvidia.part(BOUND[:32], 1),
            "certificates": VENDORS.nvidia.chain_pem(recertified).decode(),
            "ocsp": []}
    source = issued()
    source.ocsp_responses = [VENDORS.nvidia.ocsp(cert=recertified)]
    with pytest.raises(EvidenceError, match=r"GPU 2 .* is the same GPU as GPU 1 .*the same "
                                            r"attestation key"):
        await verify(document(3, p2=part), source)
    assert recertified.serial_number != leaf.serial_number


async def test_a_chain_that_is_not_the_signers_is_refused() -> None:
    with pytest.raises(EvidenceError, match=rf"^nvidia-gpu: GPU 1 \(certificate serial "
                                            rf"{serial(0)}\): the measurements' signature"):
        await verify(document(2, p1=chain_of_another(1)))


async def test_more_gpus_than_a_node_has_are_refused() -> None:
    with pytest.raises(EvidenceError, match=f"17 nvidia-gpu parts, more than {MAX_GPUS}"):
        await verify(document(MAX_GPUS + 1))


async def test_the_level_can_require_a_number_of_gpus() -> None:
    eight = await verify(document(8))
    seven = await verify(document(7))
    assert met(eight, level(count=8)) is not None
    assert met(seven, level(count=8)) is None
    assert gpu_level_problems(seven, level(count=8), AT.timestamp()) == [
        "7 GPU(s) attested, the level requires 8"]
    assert met(eight, level(count=7)) is None  # exactly: a GPU more is not the node approved
    assert met(seven, level(min_count=4)) is not None
    assert met(await verify(document(2)), level(min_count=4)) is None
    cpu_only = await verify(VENDORS.evidence(BOUND))
    assert cpu_only.gpus == ()
    assert gpu_level_problems(cpu_only, level(), AT.timestamp()) == [
        "0 GPU(s) attested, the level requires at least 1"]
    with pytest.raises(ValueError, match=r"count .* or min_count .*, not both"):
        level(count=8, min_count=8)


async def test_the_verdict_lapses_at_the_earliest_ocsp_answer_of_any_gpu() -> None:
    soon = AT + datetime.timedelta(hours=6)
    cert = VENDORS.nvidia.device(6)[1]
    evidence = await verify(document(8, p6=VENDORS.nvidia.part(
        BOUND[:32], 6, ocsp=VENDORS.nvidia.ocsp(cert=cert, next_update=soon))))
    assert evidence.not_after() == soon.timestamp()
    assert (await verify(document(8))).revocation_until == CRL_NEXT_UPDATE.timestamp()


async def test_every_gpus_rims_must_allow_it_and_hold() -> None:
    """verdicts asks the RIM references GPU by GPU: one refused fails the level, and the level
    holds until the earliest of their RIMs' ends."""
    evidence = await verify(document(4, p2=VENDORS.nvidia.part(
        BOUND[:32], 2, measurements={1: b"\x22" * 48})))
    wanted = TrustLevel.model_validate({"max_age_s": 3600, "nvidia-gpu": {
        "rims": {"url": "https://rim.test/v1/rim/"}}})
    ends = {GOOD: AT.timestamp() + 60, b"\x22" * 48: AT.timestamp() + 30}

    def rims(source: RimSource, gpu: GpuEvidence, now: float) -> tuple[list[str], float]:
        return [], ends[gpu.measurements[1]]

    def refusing(source: RimSource, gpu: GpuEvidence, now: float) -> tuple[list[str], float]:
        return (["the RIM does not allow it"], 0.0) if gpu.measurements[1] != GOOD \
            else ([], AT.timestamp() + 60)

    now = AT.timestamp()
    assert level_met(evidence, wanted, lambda _: None, now, rims) == now + 30
    assert level_met(evidence, wanted, lambda _: None, now, refusing) is None
    assert gpu_level_problems(evidence, wanted, now, refusing) == [
        f"GPU 2 (certificate serial {serial(2)}): the RIM does not allow it"]
    assert level_met(evidence, wanted, lambda _: None, now) is None  # judged without RIMs


async def test_chains_and_signatures_are_verified_off_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight GPUs' chains and signatures on the event loop would hold every request."""
    threads: list[threading.Thread] = []
    real = evidence_module.verify_gpu_evidence

    def recording(raw: bytes, chain_pem: bytes, **kwargs: Any) -> GpuEvidence:
        threads.append(threading.current_thread())
        return real(raw, chain_pem, **kwargs)

    monkeypatch.setattr(evidence_module, "verify_gpu_evidence", recording)
    assert len((await verify(document(8))).gpus) == 8
    assert len(threads) == 8
    assert threading.main_thread() not in threads


async def test_the_digest_covers_every_gpu() -> None:
    made = document(2)
    first, again = await verify(made), await verify(made)
    assert first.digest == again.digest
    other = await verify(document(2, p1=VENDORS.nvidia.part(
        BOUND[:32], 1, measurements={1: b"\x99" * 48})))
    assert other.digest != first.digest

