"""GPU reference values from RIMs as trust levels use them: RIM files or NVIDIA's RIM service
(a real HTTP server on loopback here), fetched once and cached on disk until the RIM's
certificates end, used while the service is down, refused when nothing valid is at hand; a
level naming RIMs is met only while its RIMs allow every active measurement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509

from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import Evidence
from gateway.attestation.levels import TrustLevel
from gateway.attestation.nvidia import GpuEvidence, VerifiedGpu, parse_evidence
from gateway.attestation.rim_store import RimStore
from gateway.attestation.rims import nvidia_rim_root
from gateway.attestation.transport import NetworkTransport
from gateway.attestation.verdicts import level_met, rim_sources
from gateway.settings import AttestationSettings
from tests.attestation_ca import GpuTestCa, RimTestCa, gpu_opaque
from tests.rim_service import RimService

NOW = datetime(2025, 1, 31, tzinfo=UTC).timestamp()
DRIVER_ID, VBIOS_ID = "NV_GPU_DRIVER_GH100_550.90.07", "NV_GPU_VBIOS_1010_0200_882_960074001A"
DRIVER = {20: [b"\x20" * 48], 21: [b"\x21" * 48]}
VBIOS = {0: [b"\x01" * 48], 3: [b"\x03" * 48, b"\x33" * 48]}


def gpu(**changed: bytes) -> GpuEvidence:
    """The GPU's measurements (SPDM block = RIM index + 1): the RIMs' first values."""
    blocks = {index + 1: values[0] for index, values in {**DRIVER, **VBIOS}.items()}
    blocks.update({int(k[1:]) + 1: v for k, v in changed.items()})
    return parse_evidence(GpuTestCa().evidence(bytes(32), blocks, gpu_opaque()))


def level(rims: dict[str, Any]) -> TrustLevel:
    return TrustLevel.model_validate({"nvidia-gpu": {"rims": rims}})  # max_age_s: an hour


def evidence(measured: GpuEvidence) -> Evidence:
    return Evidence(snp=None, tdx=None, gpus=(VerifiedGpu(0, "1", b"", measured),), tokens=(),
                    expected_nonce="",
                    certificate_sha256=b"", verified_at=NOW, digest="")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def no_fetch(url: str) -> bytes | None:
    raise AssertionError(f"fetched {url}")


def offline_store(ca: RimTestCa, root: x509.Certificate | None = None) -> RimStore:
    """RIMs from files only; the test CA answers OCSP about its certificates."""
    return RimStore(no_fetch, root or ca.root, Clock(), ocsp=ca.responder)


def files(tmp_path: Path, ca: RimTestCa, **versions: str) -> list[str]:
    made = {"driver": ca.rim(versions.get("driver", "550.90.07"), DRIVER),
            "vbios": ca.served(ca.rim(versions.get("vbios", "96.00.74.00.1A"), VBIOS), "x")}
    for name, body in made.items():
        (tmp_path / f"{name}.swidtag").write_bytes(body)
    return [str(tmp_path / "driver.swidtag"), str(tmp_path / "vbios.swidtag")]


async def judged(store: RimStore, wanted: TrustLevel, measured: GpuEvidence,
                 now: float = NOW) -> tuple[list[str], float | None]:
    await store.refresh([measured], rim_sources([("p", "gpu", wanted)]))
    assert wanted.nvidia_gpu is not None
    assert wanted.nvidia_gpu.rims is not None
    problems, _ = store.references(wanted.nvidia_gpu.rims, measured, now)
    return problems, level_met(evidence(measured), wanted, lambda _: None, now,
                               store.references)


def service_level(origin: str, ca: RimTestCa, tmp_path: Path) -> TrustLevel:
    """A level taking its RIMs from the loopback service, under the test CA's root."""
    return level({"url": f"{origin}/v1/rim/", "root": ca.root_pem(tmp_path / "root.pem")})


async def judged_by_service(tmp_path: Path, network: NetworkTransport, loopback: Loopback,
                            ca: RimTestCa) -> tuple[list[str], float | None]:
    """The GPU judged once against the service's RIMs; the service stopped after."""
    try:
        return await judged(fetched_store(tmp_path, network, Clock()),
                            service_level(loopback.origin, ca, tmp_path), gpu())
    finally:
        await loopback.stop()


async def test_rim_files_meet_the_level_until_the_rims_expire(tmp_path: Path) -> None:
    ca = RimTestCa(days=400)  # the signer ends 2025-02-04, within the level's max age
    wanted = TrustLevel.model_validate({"max_age_s": 7 * 24 * 3600, "nvidia-gpu": {"rims": {
        "files": files(tmp_path, ca), "root": ca.root_pem(tmp_path / "root.pem")}}})
    problems, until = await judged(offline_store(ca, nvidia_rim_root()), wanted, gpu())
    assert problems == []
    assert until == ca.leaf.not_valid_after_utc.timestamp() < NOW + 7 * 24 * 3600
    problems, until = await judged(offline_store(ca, nvidia_rim_root()), wanted,
                                   gpu(i3=b"\x33" * 48))  # the other alternative
    assert (problems, until is not None) == ([], True)


async def test_a_measurement_the_rim_does_not_allow_names_its_index(tmp_path: Path) -> None:
    ca = RimTestCa()
    wanted = level({"files": files(tmp_path, ca), "root": ca.root_pem(tmp_path / "root.pem")})
    problems, until = await judged(offline_store(ca), wanted, gpu(i21=b"\x99" * 48))
    assert problems == [f"GPU measurement index 21 {'99' * 8}... is not one of the 1 the "
                        "driver RIM 550.90.07 allows"]
    assert until is None


async def test_a_broken_or_foreign_rim_file_fails_the_level(tmp_path: Path) -> None:
    ca = RimTestCa()
    paths = files(tmp_path, ca)
    broken = Path(paths[0]).read_bytes().replace(b"<ds:SignatureValue>",
                                                 b"<ds:SignatureValue>AAAA", 1)
    Path(paths[0]).write_bytes(broken)
    wanted = level({"files": paths, "root": ca.root_pem(tmp_path / "root.pem")})
    problems, until = await judged(offline_store(ca), wanted, gpu())
    assert until is None
    assert problems[0].startswith(f"driver RIM {DRIVER_ID}: RIM file driver.swidtag: "
                                  "nvidia-rim: the signature does not verify")
    # Under the default root (NVIDIA's), the test CA's RIMs are refused.
    problems, until = await judged(offline_store(ca, nvidia_rim_root()),
                                   level({"files": files(tmp_path, ca)}), gpu())
    assert until is None
    assert "does not end at the pinned NVIDIA RIM root" in problems[0]


async def test_no_rim_file_for_the_gpus_version(tmp_path: Path) -> None:
    ca = RimTestCa()
    wanted = level({"files": files(tmp_path, ca, driver="535.104.05"),
                    "root": ca.root_pem(tmp_path / "root.pem")})
    problems, until = await judged(offline_store(ca), wanted, gpu())
    assert (problems, until) == ([f"driver RIM {DRIVER_ID}: no RIM file is for driver version "
                                  "550.90.07"], None)


def test_a_rim_source_needs_files_or_a_url() -> None:
    with pytest.raises(ValueError, match="rims needs files, a url"):
        level({"root": "x.pem"})
    with pytest.raises(ValueError, match="should match pattern"):
        level({"url": "ftp://rim"})


class Loopback:
    """The test RIM service (tests/rim_service.py) served on 127.0.0.1."""

    def __init__(self) -> None:
        self.service = RimService()
        self.runner = web.AppRunner(self.service.app())
        self.origin = ""

    async def start(self) -> Loopback:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def network() -> AsyncIterator[NetworkTransport]:
    transport = NetworkTransport()
    yield transport
    await transport.close()


def fetched_store(tmp_path: Path, network: NetworkTransport, clock: Clock) -> RimStore:
    """As the gateway has it: RIMs and OCSP answers through the collateral cache on disk."""
    collateral = CollateralStore(AttestationSettings(cache_dir=str(tmp_path / "cache")),
                                 network, clock)
    return RimStore(collateral.rim, nvidia_rim_root(), clock, ocsp=collateral.ocsp)


async def test_fetched_once_cached_and_used_while_the_service_is_down_until_expiry(
        tmp_path: Path, network: NetworkTransport) -> None:
    loopback = await Loopback().start()
    service = loopback.service
    ca = service.make_ca(loopback.origin, days=400)  # the signer ends 2025-02-04
    service.rims = {DRIVER_ID: ca.rim("550.90.07", DRIVER), VBIOS_ID: ca.rim("96.00.74.00.1A",
                                                                              VBIOS)}
    clock = Clock()
    wanted = service_level(loopback.origin, ca, tmp_path)
    store = fetched_store(tmp_path, network, clock)
    for _ in range(2):
        problems, until = await judged(store, wanted, gpu())
        assert (problems, until) == ([], NOW + 3600)
    assert sorted(service.asked) == [DRIVER_ID, VBIOS_ID]  # once each, then kept
    assert service.ocsp_asked == 2  # the signer and its CA: cached for both RIMs
    await loopback.stop()
    restarted = fetched_store(tmp_path, network, clock)  # the disk cache outlives the process
    problems, until = await judged(restarted, wanted, gpu())
    assert (problems, until) == ([], NOW + 3600)
    clock.now = datetime(2025, 3, 1, tzinfo=UTC).timestamp()  # past the signer's end
    problems, until = await judged(restarted, wanted, gpu(), clock.now)
    assert until is None
    assert problems[0].startswith(f"driver RIM {DRIVER_ID}: http://127.0.0.1")
    assert "unreachable" in problems[0]


async def test_service_down_before_anything_was_cached_fails_closed(
        tmp_path: Path, network: NetworkTransport) -> None:
    loopback = await Loopback().start()
    await loopback.stop()
    problems, until = await judged(fetched_store(tmp_path, network, Clock()),
                                   level({"url": f"{loopback.origin}/v1/rim/"}), gpu())
    assert until is None
    assert len(problems) == 2
    assert all("unreachable" in p for p in problems)


async def test_service_without_the_rim_or_with_another_version(
        tmp_path: Path, network: NetworkTransport) -> None:
    loopback = await Loopback().start()
    ca = loopback.service.make_ca(loopback.origin)
    loopback.service.rims = {DRIVER_ID: ca.rim("535.104.05", DRIVER)}
    problems, until = await judged_by_service(tmp_path, network, loopback, ca)
    assert until is None
    assert problems == [f"driver RIM {DRIVER_ID}: the RIM is for version 535.104.05, the GPU "
                        "runs 550.90.07",
                        f"vbios RIM {VBIOS_ID}: the RIM service has no such RIM"]


async def test_a_revoked_rim_signer_is_refused(tmp_path: Path,
                                               network: NetworkTransport) -> None:
    loopback = await Loopback().start()
    ca = loopback.service.make_ca(loopback.origin)
    loopback.service.rims = {DRIVER_ID: ca.rim("550.90.07", DRIVER),
                             VBIOS_ID: ca.rim("96.00.74.00.1A", VBIOS)}
    ca.revoked.add(ca.leaf.serial_number)
    problems, until = await judged_by_service(tmp_path, network, loopback, ca)
    assert until is None
    assert problems == [f"{kind} RIM {rim_id}: nvidia-rim: certificate 'Test RIM signer' is "
                        "revoked (key_compromise)"
                        for kind, rim_id in (("driver", DRIVER_ID), ("vbios", VBIOS_ID))]


async def test_rims_are_relied_on_until_their_ocsp_next_update(tmp_path: Path) -> None:
    ca = RimTestCa(ocsp_next_update=datetime(2025, 2, 1, 12, tzinfo=UTC))
    wanted = TrustLevel.model_validate({"max_age_s": 7 * 24 * 3600, "nvidia-gpu": {"rims": {
        "files": files(tmp_path, ca), "root": ca.root_pem(tmp_path / "root.pem")}}})
    problems, until = await judged(offline_store(ca), wanted, gpu())
    assert (problems, until) == ([], datetime(2025, 2, 1, 12, tzinfo=UTC).timestamp())
    async def unsigned(cert: x509.Certificate, issuer: x509.Certificate, url: str) -> bytes:
        return b"not OCSP"

    store = RimStore(no_fetch, ca.root, Clock(), ocsp=unsigned)
    problems, until = await judged(store, wanted, gpu())
    assert until is None
    assert "OCSP response for 'Test RIM signer' does not parse" in problems[0]


async def test_evidence_without_versions_and_a_level_judged_without_rims() -> None:
    measured = parse_evidence(GpuTestCa().evidence(bytes(32), {1: bytes(48)}))
    store = offline_store(RimTestCa(), nvidia_rim_root())
    wanted = level({"url": "https://rim.test/v1/rim/"})
    problems, until = await judged(store, wanted, measured)
    assert until is None
    assert "opaque data" in problems[0]
    assert level_met(evidence(gpu()), wanted, lambda _: None, NOW) is None  # no RimStore
