"""Attestation costs, side by side in one run (medians):

    snp-verify       a genuine Milan report: parse, chain ARK -> ASK -> VCEK (RSA-PSS), TCB and
                     HWID binding, report signature (ECDSA P-384)   target <= 10 ms
    tdx-verify       a genuine Sapphire Rapids quote with Intel's collateral and CRLs: PCK chain,
                     CRLs, QE report, quote signature, TCB Info and QE Identity signatures
    gpu-verify       genuine H100 SPDM measurements: 5-certificate chain, ECDSA P-384 signature
    snp-levels       checking that verified report against a trust level
    revoked-check    test-vendor SEV-SNP + GPU evidence through the evidence verifier, the ARK's
                     CRL and the OCSP response read from the collateral cache (disk)
    no-revocation    the same evidence's chain and signature checks alone (what verifying cost
                     before revocation): the difference is what revocation adds, once per
                     attestation, in the background
    cached-check     what a request pays: is this backend's verdict current for the level?
                                                                    target <= 50 us
                     (revocation changes nothing here: the verdict already accounts for it)
Run: .venv/bin/python tests/bench/attestation_speed.py
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

import orjson

from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import EvidenceVerifier, Fetched
from gateway.attestation.levels import SnpRequirements, snp_problems
from gateway.attestation.nvidia import verify_gpu_evidence
from gateway.attestation.snp import verify_report
from gateway.attestation.tdx import Collateral, verify_quote
from gateway.attestation.transport import Response
from gateway.attestation.verifier import AttestationService, Evidence
from gateway.errors import FetchError
from gateway.observability.metrics import Metrics
from gateway.settings import AttestationSettings, Settings
from tests.attestation_ca import Vendors

DATA = Path(__file__).parents[1] / "data" / "attestation"
REPORT = (DATA / "virtee_milan_report.bin").read_bytes()
VCEK = (DATA / "virtee_milan_vcek.der").read_bytes()
AT = datetime(2024, 6, 1, tzinfo=UTC)
TDX = DATA / "tdx"
TDX_QUOTE = (TDX / "tdx_prod_quote_SPR_E4.dat").read_bytes()
TDX_COLLATERAL = Collateral(
    (TDX / "sample_tcbInfo_response").read_text(), (TDX / "tcbinfo_issuer_chain.pem").read_bytes(),
    (TDX / "sample_qeIdentity_response").read_text(),
    (TDX / "qeidentity_issuer_chain.pem").read_bytes(), (TDX / "pckcrl").read_bytes(),
    (TDX / "rootcrl.der").read_bytes())
TDX_AT = datetime(2023, 7, 1, tzinfo=UTC)
GPU = bytes.fromhex((DATA / "nvidia" / "hopperAttestationReport.txt").read_text().strip())
GPU_CHAIN = (DATA / "nvidia" / "hopper_cert_chain_case1.txt").read_bytes()


def median_us(action: Callable[[], object], repeats: int, inner: int = 1) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            action()
        samples.append((time.perf_counter() - started) / inner * 1e6)
    return statistics.median(samples)


class OnlyKds:
    """Answers AMD KDS's CRL and the test NVIDIA's OCSP responder once; anything later must come
    from the cache."""

    def __init__(self, vendors: Vendors) -> None:
        self.crl, self.ocsp = vendors.amd.crl(), vendors.nvidia.ocsp()
        self.answered: set[str] = set()

    async def certificate(self, host: str, port: int, *, timeout_s: float) -> bytes:
        raise FetchError("not used")

    async def get(self, url: str, **_: object) -> Response:
        if url in self.answered:
            raise FetchError(f"{url} asked twice: the cache is not used")
        self.answered.add(url)
        return Response(200, self.crl if url.endswith("/crl") else self.ocsp)


def revocation_rows() -> list[tuple[str, float, float | None]]:
    vendors = Vendors()
    bound = bytes(64)
    document = vendors.evidence(bound, gpu=True, stapled=False)
    fetched = Fetched(orjson.dumps(document), bound, bytes(32))
    now = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
    store = CollateralStore(AttestationSettings(amd_kds_url="https://kds.test",
                                                cache_dir=tempfile.mkdtemp()),
                            OnlyKds(vendors), clock=lambda: now)
    verifier = EvidenceVerifier(vendors.roots(), store, lambda: now)
    report = base64.b64decode(document["evidence"][0]["report"])
    gpu = document["evidence"][1]
    roots = vendors.roots()
    at = datetime.fromtimestamp(now, UTC)

    def without() -> None:
        verify_report(report, vendors.vcek, at=at, roots=roots.amd)
        verify_gpu_evidence(bytes.fromhex(gpu["evidence"]), gpu["certificates"].encode(),
                            expected_nonce=None, at=at, root=roots.nvidia)

    async def timed(repeats: int) -> float:
        await verifier.verify(fetched)  # fills the cache
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            await verifier.verify(fetched)
            samples.append((time.perf_counter() - started) * 1e6)
        return statistics.median(samples)

    return [("revoked-check", asyncio.run(timed(100)), None),
            ("no-revocation", median_us(without, 100), None)]


def main() -> None:
    verified = verify_report(REPORT, VCEK, at=AT)
    wanted = SnpRequirements(measurements=[verified.report.measurement.hex()],
                             min_tcb={"snp": 8, "microcode": 115})
    settings = Settings.model_validate({
        "backends": [{"name": "tee", "url": "https://127.0.0.1:1", "attestation": {}}],
        "models": {"m": ["tee"]}, "policies": {"files": ["policies/default.yaml"]}})
    service = AttestationService(settings, list, Metrics(), clock=time.time)
    state = service._states["tee"]  # a benchmark sets the verdict directly
    state.evidence = Evidence(verified, None, None, (), "", b"\0" * 32, time.time(), "sha256:x")
    state.met = {("sha256:policy", "confidential-cpu"): time.time() + 3600}
    rows = [
        ("snp-verify", median_us(lambda: verify_report(REPORT, VCEK, at=AT), 200), 10_000.0),
        ("tdx-verify", median_us(lambda: verify_quote(TDX_QUOTE, TDX_COLLATERAL, at=TDX_AT),
                                 100), None),
        ("gpu-verify", median_us(lambda: verify_gpu_evidence(GPU, GPU_CHAIN, expected_nonce=None,
                                                             at=AT), 100), None),
        ("snp-levels", median_us(lambda: snp_problems(verified, wanted), 200, 100), None),
        *revocation_rows(),
        ("cached-check", median_us(lambda: service.meets("tee", "sha256:policy",
                                                         ("confidential-cpu",)), 200, 1000),
         50.0),
    ]
    print(f"\n{'operation':<14}{'median us':>12}{'target us':>12}  met")
    for name, value, target in rows:
        met = "" if target is None else ("yes" if value <= target else "NO")
        print(f"{name:<14}{value:>12.2f}{target or '':>12}  {met}")


if __name__ == "__main__":
    main()
