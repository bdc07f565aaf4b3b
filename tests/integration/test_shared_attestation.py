"""Attestation shared by replicas through a real Redis (gateway/state/shared_attestation.py).

Whole gateways over loopback TLS: two replicas in front of one confidential backend ask it for
evidence once between them, each verifying it and pinning the certificate itself; a new TLS
key is attested afresh; nothing planted or altered in Redis makes a replica route anywhere; a
Redis that goes away costs the sharing, never the attestation; AMD KDS is asked once for all.
Then the attestation service alone, with the unit tests' fake network and clock, for the rules
on which shared evidence is adopted (age, clock skew, a level's max age, never twice)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis

from gateway.app import GATEWAY
from gateway.attestation.levels import TrustLevel
from gateway.attestation.verifier import AttestationService
from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from gateway.state.redis_store import connect
from gateway.state.shared_attestation import (
    COLLATERAL_PREFIX,
    EVIDENCE_PREFIX,
    Sealer,
    SharedAttestation,
    evidence_context,
)
from tests.integration.test_attested_routing import (
    LEVEL,
    POLICY,
    ConfidentialBackend,
    attested,
    chat,
    policy_digest,
    roots_dir,
    tls_context,
    wait_attested,
    wait_until,
)
from tests.integration.test_collateral_fetch import FakeKeyServices
from tests.redis_server import RedisServer
from tests.servers import UPSTREAM_SECRET, ServerThread, gateway_for, settings_for
from tests.unit.attestation.test_verifier import (
    SNP,
    T0,
    VENDORS,
    Clock,
    FakeNetwork,
    document,
    settings,
    until,
)

VAULT_SECRET = "vault-secret-shared-by-every-replica-0123"
ENVIRON = {"DEMO_KEY": UPSTREAM_SECRET, "VEIL_VAULT_KEY": VAULT_SECRET}
PERSONAL = "mail jane.roe@example.com"  # needs LEVEL


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def replica_settings(tmp_path: Path, redis_url: str, backends: dict[str, str],
                     **attestation: Any) -> Settings:
    return settings_for(
        [attested(name, url) for name, url in backends.items()], policy=POLICY,
        attestation={"amd_roots_dir": roots_dir(tmp_path), "cache_dir": None, **attestation},
        state={"redis_url": redis_url, "timeout_s": 0.5, "vault_key_env": "VEIL_VAULT_KEY"})


def replica(settings: Settings) -> ServerThread:
    return gateway_for(settings, environ=ENVIRON)


def record_name(backend: str, certificate: bytes) -> str:
    """Where a replica keeps its evidence for `backend` presenting `certificate`."""
    context = evidence_context(backend, hashlib.sha256(certificate).digest())
    return Sealer(VAULT_SECRET.encode()).name(EVIDENCE_PREFIX, context)


def result_count(gw: ServerThread, backend: str, result: str) -> float:
    return gw.app[GATEWAY].metrics.registry.get_sample_value(
        "veil_attestations_total", {"backend": backend, "result": result}) or 0.0


def attestations(gw: ServerThread, backend: str) -> float:
    return sum(result_count(gw, backend, r) for r in ("verified", "shared", "refused"))


def state_failures(gw: ServerThread, concern: str) -> float:
    return gw.app[GATEWAY].metrics.registry.get_sample_value(
        "veil_state_failures_total", {"concern": concern}) or 0.0


def re_attest(gw: ServerThread, backend: str) -> None:
    """Make the replica attest `backend` again now, and wait until it has."""
    before = attestations(gw, backend)
    gw.loop.call_soon_threadsafe(gw.app[GATEWAY].attestation.key_changed, backend)
    wait_until(lambda: attestations(gw, backend) > before)


def meets(gw: ServerThread, backend: str) -> bool:
    return gw.app[GATEWAY].attestation.meets(backend, policy_digest(gw), (LEVEL,))


# -- whole replicas --------------------------------------------------------------------------


def test_replicas_share_one_attestation(tmp_path: Path, redis_server: RedisServer) -> None:
    context, certificate = tls_context(tmp_path, "tee")
    backend = ConfidentialBackend(certificate)
    with ServerThread(backend.app(), ssl_context=context) as tee:
        settings = replica_settings(tmp_path, redis_server.url, {"tee": tee.url})
        with replica(settings) as first, replica(settings) as second:
            for gw in (first, second):
                wait_attested(gw, "tee")
            for gw in (first, second):
                r = chat(gw.url, PERSONAL)
                assert r.status_code == 200, r.text
                pin = gw.app[GATEWAY].attestation.pin("tee")
                assert pin is not None
                assert pin.fingerprint == hashlib.sha256(certificate).digest()  # its own pin
            page = httpx.get(second.url + "/metrics").text
            counts = [(result_count(gw, "tee", "verified"), result_count(gw, "tee", "shared"))
                      for gw in (first, second)]
    assert len(backend.nonces) == 1  # asked once between them
    assert backend.served == 2
    assert counts == [(1, 0), (0, 1)]
    assert 'veil_attestations_total{backend="tee",result="shared"} 1.0' in page


def test_a_new_tls_key_is_attested_afresh(tmp_path: Path, redis_server: RedisServer) -> None:
    first_context, first_certificate = tls_context(tmp_path, "first-key")
    backend = ConfidentialBackend(first_certificate)
    server = ServerThread(backend.app(), ssl_context=first_context).__enter__()
    settings = replica_settings(tmp_path, redis_server.url, {"tee": server.url})
    store = redis.Redis.from_url(redis_server.url)
    with replica(settings) as first:
        wait_attested(first, "tee")
        assert store.exists(record_name("tee", first_certificate))
        # The machine comes back on the same address with another TLS key.
        port = server.port
        server.__exit__(None, None, None)
        second_context, second_certificate = tls_context(tmp_path, "second-key")
        backend.certificate = second_certificate
        with ServerThread(backend.app(), port=port, ssl_context=second_context), \
                replica(settings) as second:
            wait_attested(second, "tee")
            # The record for the old key was there, and did not apply to the new one.
            assert store.exists(record_name("tee", first_certificate))
            assert len(backend.nonces) == 2
            pin = second.app[GATEWAY].attestation.pin("tee")
            assert pin is not None
            assert pin.fingerprint == hashlib.sha256(second_certificate).digest()
            # The first replica's pinned connection refuses the new key; it re-attests and
            # adopts what the second received for that key.
            assert chat(first.url, PERSONAL).status_code in (502, 503)
            wait_until(lambda: meets(first, "tee"))
            assert chat(first.url, PERSONAL).status_code == 200
            assert len(backend.nonces) == 2
            assert result_count(first, "tee", "shared") == 1


def tampered(store: redis.Redis, how: str, good: str, bad: str) -> None:
    """Redis as an attacker who can write it (not holding the vault secret) leaves it."""
    record = store.get(good)
    assert record is not None
    if how == "flipped":
        blob = bytearray(base64.b64decode(record))
        blob[len(blob) // 2] ^= 0x01
        store.set(good, base64.b64encode(bytes(blob)))
    elif how == "garbage":
        store.set(good, "garbage")
    elif how == "not text":
        store.set(good, b"\xff\xfe\x00 not utf-8")
    elif how == "a list":
        store.delete(good)
        store.rpush(good, "a", "b")
    elif how == "huge":
        store.set(good, "A" * (1024 * 1024))
    elif how == "another backend's":
        store.set(good, store.get(bad) or b"")
    store.set(bad, record)  # the good backend's verdict copied under the bad one's name


@contextmanager
def good_and_bad(tmp_path: Path, redis_url: str) -> Iterator[
        tuple[dict[str, tuple[Any, bytes]], dict[str, ConfidentialBackend], Settings]]:
    """Two confidential backends on loopback TLS, one whose measurement no level allows, and
    the settings of replicas in front of them; the first replica has attested both (and
    published the good one's evidence) by the time the block runs."""
    contexts = {name: tls_context(tmp_path, name) for name in ("good", "bad")}
    backends = {"good": ConfidentialBackend(contexts["good"][1]),
                "bad": ConfidentialBackend(contexts["bad"][1], measurement=bytes(48))}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(ServerThread(b.app(), ssl_context=contexts[name][0])).url
                for name, b in backends.items()}
        settings = replica_settings(tmp_path, redis_url, urls)
        with replica(settings) as first:
            wait_attested(first, "good")
            wait_until(lambda: attestations(first, "bad") >= 1)
        yield contexts, backends, settings


@pytest.mark.parametrize("how", ["flipped", "garbage", "not text", "a list", "huge",
                                 "another backend's"])
def test_a_planted_or_altered_record_is_never_accepted(
        tmp_path: Path, redis_server: RedisServer, how: str) -> None:
    with good_and_bad(tmp_path, redis_server.url) as (contexts, backends, settings):
        store = redis.Redis.from_url(redis_server.url)
        tampered(store, how, record_name("good", contexts["good"][1]),
                 record_name("bad", contexts["bad"][1]))
        with replica(settings) as second:
            wait_attested(second, "good")
            wait_until(lambda: attestations(second, "bad") >= 1)
            assert not meets(second, "bad")
            for _ in range(3):
                assert chat(second.url, PERSONAL).status_code == 200
            skipped = state_failures(second, "attestation")
            shared = result_count(second, "good", "shared") + result_count(second, "bad", "shared")
    assert (len(backends["good"].nonces), len(backends["bad"].nonces)) == (2, 2)  # its own
    assert shared == 0
    assert skipped == 2
    assert backends["bad"].served == 0


def test_a_failing_backend_is_refused_whatever_redis_says(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Even a record sealed with the real key (an insider holding the vault secret) cannot vouch
    for a machine: the adopting replica binds it to the certificate it reads itself."""
    with good_and_bad(tmp_path, redis_server.url) as (contexts, backends, settings):
        store = redis.Redis.from_url(redis_server.url, decode_responses=True)
        sealer = Sealer(VAULT_SECRET.encode())
        good = evidence_context("good", hashlib.sha256(contexts["good"][1]).digest())
        bad = evidence_context("bad", hashlib.sha256(contexts["bad"][1]).digest())
        received = sealer.open(good, store.get(sealer.name(EVIDENCE_PREFIX, good)) or "")
        store.set(sealer.name(EVIDENCE_PREFIX, bad), sealer.seal(bad, received))
        with replica(settings) as second:
            wait_attested(second, "good")
            wait_until(lambda: attestations(second, "bad") >= 1)
            assert not meets(second, "bad")
            assert second.app[GATEWAY].attestation.pin("bad") != \
                second.app[GATEWAY].attestation.pin("good")
            for _ in range(3):
                assert chat(second.url, PERSONAL).status_code == 200
            assert result_count(second, "bad", "shared") == 0
    assert len(backends["bad"].nonces) == 2  # refused the record, asked the machine itself
    assert backends["bad"].served == 0


def test_redis_down_replicas_attest_on_their_own_then_share_again(
        tmp_path: Path, redis_server: RedisServer) -> None:
    context, certificate = tls_context(tmp_path, "tee")
    backend = ConfidentialBackend(certificate)
    store = redis.Redis.from_url(redis_server.url)
    with ServerThread(backend.app(), ssl_context=context) as tee:
        settings = replica_settings(tmp_path, redis_server.url, {"tee": tee.url})
        with replica(settings) as first, replica(settings) as second:
            for gw in (first, second):
                wait_attested(gw, "tee")
            assert len(backend.nonces) == 1
            redis_server.stop()
            for gw in (first, second):
                re_attest(gw, "tee")
                assert meets(gw, "tee")
                assert chat(gw.url, PERSONAL).status_code == 200
                assert state_failures(gw, "attestation") >= 1
            assert len(backend.nonces) == 3  # each on its own
            redis_server.start()  # empty: nothing was saved
            re_attest(first, "tee")  # publishes again...
            wait_until(lambda: store.exists(record_name("tee", certificate)))
            re_attest(second, "tee")  # ... and the other adopts it
            assert meets(second, "tee")
            assert chat(second.url, PERSONAL).status_code == 200
            assert len(backend.nonces) == 4
            assert result_count(second, "tee", "shared") == 2


def test_collateral_is_fetched_once_for_all_replicas(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """The backend does not send its VCEK: one replica asks AMD KDS, the other reads it from
    Redis, both for evidence it adopts and for evidence it fetched itself."""
    context, certificate = tls_context(tmp_path, "vm")
    backend = ConfidentialBackend(certificate, endorsed=False)
    services = FakeKeyServices()
    with ServerThread(backend.app(), ssl_context=context) as vm, \
            ServerThread(services.app()) as kds:
        first_settings = replica_settings(tmp_path, redis_server.url, {"vm": vm.url},
                                          amd_kds_url=kds.url,
                                          cache_dir=str(tmp_path / "cache"))
        second_settings = replica_settings(tmp_path, redis_server.url, {"vm": vm.url},
                                           amd_kds_url=kds.url)  # no disk cache at all
        with replica(first_settings) as first:
            wait_attested(first, "vm")
            with replica(second_settings) as second:
                wait_attested(second, "vm")  # adopted, verified with the shared VCEK
                assert result_count(second, "vm", "shared") == 1
                re_attest(second, "vm")  # its own evidence now, still the shared VCEK
                assert meets(second, "vm")
                assert result_count(second, "vm", "verified") == 1
                assert chat(second.url, PERSONAL).status_code == 200
    assert len(backend.nonces) == 2
    assert services.hits["vcek"] == 1
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert len(list(redis.Redis.from_url(redis_server.url).scan_iter(
        COLLATERAL_PREFIX + "*"))) == 1


# -- the service alone: which shared evidence is adopted -------------------------------------


@asynccontextmanager
async def replicas(redis_url: str, clock: Clock, network: FakeNetwork, count: int = 1,
                   level: dict[str, Any] | None = None) -> AsyncIterator[
                       list[AttestationService]]:
    """`count` attestation services sharing one Redis, the machine `network` reaches and the
    clock; started one after the other, each once it has attested."""
    levels = [("sha256:policy", "confidential",
               TrustLevel.model_validate({"max_age_s": 600, **(level or SNP)}))]
    store = connect(redis_url, 0.5)
    services: list[AttestationService] = []
    try:
        for _ in range(count):
            metrics = Metrics()
            service = AttestationService(
                settings(), lambda: levels, metrics, clock=clock, transport=network,
                roots=VENDORS.roots(),
                shared=SharedAttestation(store, VAULT_SECRET.encode(), 0.5, metrics))
            services.append(service)
            await service.start()
            await until(lambda s=service: s.digest("tee") is not None)
        yield services
    finally:
        for service in services:
            await service.close()
        await store.aclose()


def adopted(service: AttestationService) -> bool:
    return service.meets("tee", "sha256:policy", ("confidential",))


async def test_a_replica_adopts_shared_evidence_and_keeps_its_max_age(
        redis_server: RedisServer) -> None:
    clock, network = Clock(T0), FakeNetwork(document())
    async with replicas(redis_server.url, clock, network):
        clock.now = T0 + 100
        async with replicas(redis_server.url, clock, network) as (second,):
            assert len(network.nonces) == 1
            clock.now = T0 + 599
            assert adopted(second)
            clock.now = T0 + 600  # 600 s after the first replica sent the nonce, not 700
            assert not adopted(second)


@pytest.mark.parametrize(("offset", "asked"), [(299, 1), (300, 2), (-4, 1), (-6, 2)],
                         ids=["young", "older than refresh_s", "slight skew", "from the future"])
async def test_shared_evidence_is_adopted_only_while_young(
        redis_server: RedisServer, offset: float, asked: int) -> None:
    clock, network = Clock(T0), FakeNetwork(document())
    async with replicas(redis_server.url, clock, network):
        clock.now = T0 + offset
        async with replicas(redis_server.url, clock, network) as (late,):
            assert adopted(late)
            assert len(network.nonces) == asked


async def test_shared_evidence_too_old_for_a_level_is_not_adopted(
        redis_server: RedisServer) -> None:
    """A level with a max age below refresh_s: evidence of our own would meet it, so it is
    fetched rather than adopting a record that would not."""
    level = {**SNP, "max_age_s": 60}
    clock, network = Clock(T0), FakeNetwork(document())
    async with replicas(redis_server.url, clock, network, level=level):
        clock.now = T0 + 61
        async with replicas(redis_server.url, clock, network, level=level) as (late,):
            assert len(network.nonces) == 2
            assert adopted(late)


async def test_a_replica_never_adopts_again_the_evidence_it_holds(
        redis_server: RedisServer) -> None:
    clock, network = Clock(T0), FakeNetwork(document())
    async with replicas(redis_server.url, clock, network, count=2) as (_, second):
        second.key_changed("tee")  # the same key: the record still applies, but it is ours
        await until(lambda: len(network.nonces) == 2 and adopted(second))
