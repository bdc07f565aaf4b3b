"""The attestation service driven through a fake transport (no sockets): verdicts are kept per
backend and lapse at the earliest of the level's max age, token expiry, Intel's nextUpdate and
the endorsement certificate's end; a changed TLS key forgets the verdict and re-attests; any
failure leaves no verdict; token keys come only from the policy's JWKS URL; a document too
large or not JSON is refused. The machines are the test vendors' (tests/attestation_ca.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.evidence import MAX_EVIDENCE_BYTES
from gateway.attestation.levels import TrustLevel
from gateway.attestation.transport import Response
from gateway.attestation.verifier import AttestationService
from gateway.errors import FetchError
from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from tests.attestation_ca import MEASUREMENT, MRTD, TOKEN_ISSUER, Vendors, jwk, self_signed

VENDORS = Vendors()
T0 = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
POLICY = "sha256:policy"
LEVEL = "confidential"
ORIGIN = "https://tee.test"
EVIDENCE_URL = ORIGIN + "/.well-known/veil-attestation"
JWKS_URL = "https://keys.test/jwks"
SNP = {"sev-snp": {"measurements": [MEASUREMENT.hex()], "min_tcb": {"snp": 8}}}
TDX = {"tdx": {"mrtd": [MRTD.hex()]}}
TOKEN = {"token": {"issuer": TOKEN_ISSUER, "jwks_url": JWKS_URL}}
# The test AMD's CRLs as the operator's files (roots are handed to the service directly).
AMD_DIR = VENDORS.amd.roots_dir(Path(tempfile.mkdtemp(prefix="veil-amd-")))


def certificate(name: str = "tee") -> bytes:
    return self_signed(name)[1].public_bytes(serialization.Encoding.DER)


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


Answer = Callable[[bytes], Response]  # the binding the evidence must carry -> the answer


@dataclass
class FakeNetwork:
    """The `Transport` the service is given: one confidential machine at ORIGIN, presenting
    `presented` and answering its evidence endpoint with `answer(binding)`; anything else by
    URL from `routes`. A pinned GET reaches the machine only while it presents that key."""

    answer: Answer
    routes: dict[str, Response] = field(default_factory=dict)
    presented: bytes = field(default_factory=certificate)
    asked: list[str] = field(default_factory=list)  # every URL, in order
    nonces: list[str] = field(default_factory=list)

    async def certificate(self, host: str, port: int, *, timeout_s: float) -> bytes:
        if (host, port) != ("tee.test", 443):
            raise FetchError(f"no TLS connection to {host}:{port}")
        return self.presented

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  pin: bytes | None = None, timeout_s: float, max_bytes: int) -> Response:
        self.asked.append(url)
        if url != EVIDENCE_URL:
            return self.routes.get(url, Response(404, b""))
        if pin != hashlib.sha256(self.presented).digest():
            raise FetchError("presented another certificate than the pinned one")
        nonce = (params or {})["nonce"]
        self.nonces.append(nonce)
        return self.answer(binding(bytes.fromhex(nonce), spki_sha256(self.presented)))


def document(**options: Any) -> Answer:
    """A machine answering with the test vendors' evidence, bound as asked."""
    def answer(bound: bytes) -> Response:
        return Response(200, orjson.dumps(VENDORS.evidence(bound, **options)))
    return answer


def tokens(*, key: ec.EllipticCurvePrivateKey | None = None,
           headers: dict[str, Any] | None = None, **claims: Any) -> Answer:
    """An SNP report plus an attestation service's token on the same binding."""
    def answer(bound: bytes) -> Response:
        token = VENDORS.token(bound, now=T0, key=key, headers=headers, **claims)
        return Response(200, orjson.dumps(VENDORS.evidence(bound, tokens=(token,))))
    return answer


def settings(**attestation: Any) -> Settings:
    return Settings.model_validate({
        "backends": [{"name": "tee", "url": ORIGIN, "attestation": {"refresh_s": 300}}],
        "models": {"m": ["tee"]}, "policies": {"files": ["unused.yaml"]},
        "attestation": {"cache_dir": None, "amd_kds_url": None, "intel_pcs_url": None,
                        "amd_roots_dir": AMD_DIR, **attestation}})


@dataclass
class World:
    network: FakeNetwork
    clock: Clock
    metrics: Metrics
    levels: list[tuple[str, str, TrustLevel]]  # the trust levels in force, as the app has them
    service: AttestationService

    def attempts(self, result: str) -> float:
        return self.metrics.registry.get_sample_value(
            "veil_attestations_total", {"backend": "tee", "result": result}) or 0.0

    def meets(self, at: float | None = None) -> bool:
        if at is not None:
            self.clock.now = at
        return self.service.meets("tee", POLICY, (LEVEL,))

    async def attested(self, count: int = 1) -> None:
        """Until the service has finished `count` attestations, whatever their outcome."""
        await until(lambda: self.attempts("verified") + self.attempts("refused") >= count)


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def world(answer: Answer, level: Mapping[str, Any] | None = None, *,
                clock: Clock | None = None, routes: dict[str, Response] | None = None,
                **attestation: Any) -> AsyncIterator[World]:
    """The service attesting one machine, with the test vendors' roots, one policy (POLICY)
    with one level (LEVEL: `level`, max_age_s 600), and `attestation` settings."""
    network = FakeNetwork(answer, routes or {})
    clock = clock or Clock()
    levels = [(POLICY, LEVEL, TrustLevel.model_validate({"max_age_s": 600, **(level or SNP)}))]
    metrics = Metrics()
    service = AttestationService(settings(**attestation), lambda: levels, metrics,
                                 clock=clock, transport=network, roots=VENDORS.roots())
    await service.start()
    try:
        yield World(network, clock, metrics, levels, service)
    finally:
        await service.close()


@pytest.fixture
async def snp() -> AsyncIterator[World]:
    async with world(document()) as w:
        yield w


async def test_a_verdict_is_kept_and_lapses_at_the_levels_max_age(snp: World) -> None:
    await snp.attested()
    assert snp.meets()
    assert snp.meets(T0 + 599)
    assert not snp.meets(T0 + 600)
    pin = snp.service.pin("tee")
    assert pin is not None
    assert pin.fingerprint == hashlib.sha256(snp.network.presented).digest()
    assert (snp.service.digest("tee") or "").startswith("sha256:")
    assert snp.network.asked == [EVIDENCE_URL]  # lookups are lookups: no I/O per request
    assert not snp.service.meets("tee", "sha256:another-policy", (LEVEL,))
    assert not snp.service.meets("unknown", POLICY, (LEVEL,))


def vcek_end() -> float:
    return x509.load_der_x509_certificate(VENDORS.vcek).not_valid_after_utc.timestamp()


EXPIRIES = {
    "token expiry": (tokens(exp=int(T0) + 120), {**SNP, **TOKEN}, T0, T0 + 120),
    "collateral nextUpdate": (
        document(kind="tdx", measurement=MRTD, next_update=datetime.fromtimestamp(
            T0 + 300, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")), TDX, T0, T0 + 300),
    "certificate end": (document(), SNP, vcek_end() - 200, vcek_end()),
}


@pytest.mark.parametrize("case", sorted(EXPIRIES))
async def test_a_verdict_lapses_at_the_earliest_end(case: str) -> None:
    answer, level, start, end = EXPIRIES[case]
    routes = {JWKS_URL: Response(200, orjson.dumps(VENDORS.jwks()))}
    async with world(answer, level, clock=Clock(start), routes=routes) as w:
        await w.attested()
        assert w.meets(end - 1)
        assert not w.meets(end)  # before the level's own max age (600 s) would end it


async def test_a_changed_tls_key_forgets_the_verdict_and_re_attests(snp: World) -> None:
    await snp.attested()
    old_digest = snp.service.digest("tee")
    snp.network.presented = certificate("tee-after-restart")  # same address, another key
    snp.service.key_changed("tee")  # what the forwarder says when the pinned key is refused
    assert not snp.meets()
    assert snp.service.pin("tee") is None
    await snp.attested(2)
    assert snp.meets()
    pin = snp.service.pin("tee")
    assert pin is not None
    assert pin.fingerprint == hashlib.sha256(snp.network.presented).digest()
    assert snp.service.digest("tee") != old_digest
    assert len(set(snp.network.nonces)) == 2  # a fresh nonce each time


def replayed(bound: bytes) -> Response:
    """A document made for another nonce: exactly what a replay looks like."""
    return document()(binding(bytes(32), bound[:32]))


def for_another_key(bound: bytes) -> Response:
    other = binding(bytes.fromhex("11" * 32), spki_sha256(certificate("elsewhere")))
    return document()(other)


def tampered(bound: bytes) -> Response:
    evidence = VENDORS.evidence(bound)
    report = bytearray(base64.b64decode(evidence["evidence"][0]["report"]))
    report[0x90] ^= 1  # one bit of the measurement
    evidence["evidence"][0]["report"] = base64.b64encode(bytes(report)).decode()
    return Response(200, orjson.dumps(evidence))


def unreachable(bound: bytes) -> Response:
    raise FetchError("timed out")


FAILURES: dict[str, Answer] = {
    "unreachable": unreachable,
    "server error": lambda bound: Response(500, b"{}"),
    "replayed": replayed,
    "bound to another TLS key": for_another_key,
    "tampered": tampered,
    "no VCEK and no AMD KDS": document(endorsed=False),
    "no TDX collateral and no Intel PCS": document(kind="tdx", endorsed=False),
    "an unknown part": lambda bound: Response(200, orjson.dumps(
        {"evidence": [*VENDORS.evidence(bound)["evidence"], {"format": "sgx"}]})),
    "two reports": lambda bound: Response(200, orjson.dumps(
        {"evidence": VENDORS.evidence(bound)["evidence"] * 2})),
    "oversize": lambda bound: Response(200, orjson.dumps(
        {**VENDORS.evidence(bound), "padding": "x" * MAX_EVIDENCE_BYTES})),
    "not JSON": lambda bound: Response(200, b"<html>evidence</html>"),
    "JSON of another shape": lambda bound: Response(200, b'{"report": "AAAA"}'),
    "no parts": lambda bound: Response(200, b'{"evidence": []}'),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
async def test_a_failed_attestation_leaves_no_verdict(case: str) -> None:
    async with world(FAILURES[case]) as w:
        await w.attested()
        assert w.attempts("refused") == 1
        assert not w.meets()
        assert w.service.pin("tee") is None
        assert w.service.digest("tee") is None


async def test_a_verdict_held_is_dropped_when_re_attestation_fails(snp: World) -> None:
    await snp.attested()
    assert snp.meets()
    snp.network.answer = FAILURES["server error"]
    snp.service.policies_changed()  # which re-attests at once
    await snp.attested(2)
    assert not snp.meets()
    assert snp.service.pin("tee") is None


async def test_a_policy_change_takes_effect_without_waiting(snp: World) -> None:
    await snp.attested()
    snp.network.answer = FAILURES["unreachable"]  # so only the re-evaluation can decide
    snp.levels.clear()  # the policies in force now define no level
    snp.service.policies_changed()
    assert not snp.meets()


EVIL_KEY = ec.generate_private_key(ec.SECP256R1())
EVIL_JWKS = "https://evil.test/jwks"


async def test_token_keys_come_only_from_the_policys_jwks_url() -> None:
    """A token signed by another key, pointing at that key (`jku`) and embedding it (`jwk`),
    is never trusted: only the policy's URL is fetched, and its keys do not verify it."""
    routes = {JWKS_URL: Response(200, orjson.dumps(VENDORS.jwks())),
              EVIL_JWKS: Response(200, orjson.dumps({"keys": [jwk(EVIL_KEY, "k1")]}))}
    headers = {"jku": EVIL_JWKS, "jwk": jwk(EVIL_KEY, "k1")}
    async with world(tokens(key=EVIL_KEY, headers=headers), {**SNP, **TOKEN},
                         routes=routes) as w:
        await w.attested()
        assert w.service.digest("tee") is not None  # the report verified ...
        assert not w.meets()  # ... but the token did not
        assert EVIL_JWKS not in w.network.asked
        assert JWKS_URL in w.network.asked
    async with world(tokens(headers=headers), {**SNP, **TOKEN}, routes=routes) as w:
        await w.attested()
        assert w.meets()  # the same token signed with the service's key


async def test_a_key_set_that_cannot_be_fetched_meets_no_token_level() -> None:
    routes = {JWKS_URL: Response(503, b"")}
    async with world(tokens(), {**SNP, **TOKEN}, routes=routes) as w:
        await w.attested()
        assert w.service.digest("tee") is not None
        assert not w.meets()


async def test_endorsements_come_from_the_key_services_through_the_transport(
        tmp_path: Path) -> None:
    kds = "https://kds.test"
    vcek_url = (f"{kds}/vcek/v1/Milan/{bytes(range(64, 128)).hex()}"
                "?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115")
    routes = {vcek_url: Response(200, VENDORS.vcek)}
    async with world(document(endorsed=False), routes=routes, amd_kds_url=kds,
                         cache_dir=str(tmp_path)) as w:
        await w.attested()
        assert w.meets()
        assert w.network.asked == [EVIDENCE_URL, vcek_url]


async def test_a_verdict_lapses_at_the_crls_next_update_and_a_stale_crl_renews_nothing(
        tmp_path: Path) -> None:
    crl = VENDORS.amd.crl(next_update=datetime.fromtimestamp(T0 + 300, UTC))
    clock = Clock()
    async with world(document(), clock=clock,
                     amd_roots_dir=VENDORS.amd.roots_dir(tmp_path, crl=crl)) as w:
        await w.attested()
        assert w.meets(T0 + 299)
        assert not w.meets(T0 + 300)
        w.clock.now = T0 + 301
        w.service.key_changed("tee")  # re-attest now: the CRL on file is past its nextUpdate
        await w.attested(2)
        assert w.attempts("refused") == 1
        assert not w.meets()
