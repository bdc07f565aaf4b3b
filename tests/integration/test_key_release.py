"""Attested key release over loopback TLS: `veil keys serve` (a real process in the first test,
a ServerThread elsewhere) releases the gateway's keys only to a gateway whose own SEV-SNP
evidence (the test AMD standing in for configfs-tsm, signing exactly the report_data the
gateway asks for) verifies, is bound to this exchange and meets the service's trust level; a
gateway refused does not start."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.app import GATEWAY
from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.levels import TrustLevel
from gateway.cli import main
from gateway.errors import CustodyError, EvidenceError, KeyReleaseRefused
from gateway.keys.release import (
    CHALLENGE_PATH,
    IDENTITY,
    RELEASE_PATH,
    identity_public,
    open_keys,
    raw_public,
    release_binding,
)
from gateway.keys.sealed_store import SealedStore
from gateway.keys.service import build_service_app, service_tls, store_sealer
from gateway.keys.service_config import KeyServiceSettings, load_service_settings
from gateway.keys.service_run import seal, trust_level
from gateway.keys.token import Token
from gateway.observability.audit import verify
from gateway.settings import Settings
from tests.attestation_ca import MEASUREMENT, MRTD, tls_context
from tests.conftest import Demo
from tests.integration.test_attested_routing import (
    LEVEL,
    POLICY,
    TDX_LEVEL,
    VENDORS,
    roots_dir,
    tdx_policy,
)
from tests.integration.test_cli_serve import free_port
from tests.integration.test_gateway_attestation import OTHER_MEASUREMENT, Platform
from tests.servers import TEST_KEY, ServerThread, demo_backend, gateway_for, settings_for
from tests.softhsm import PIN, PIN_ENV, SoftHsm

ROOT = Path(__file__).parents[2]
MASTER = bytes(range(32))
RELEASED = ["audit", "hash"]


@dataclass
class World:
    """A key service's files (its TLS identity, policy, sealed store), the gateway's TLS
    identity, and the clock the in-process service reads."""

    tmp: Path
    now: list[float]

    @property
    def config(self) -> Path:
        return self.tmp / "keys-service.yaml"

    def settings(self) -> KeyServiceSettings:
        return load_service_settings(self.config)

    def store(self) -> SealedStore:
        return SealedStore(self.tmp / "keys.json", AESGCM(MASTER))

    def identity(self, store: SealedStore | None = None) -> bytes:
        """The service's identity key's public half: what a gateway is configured with."""
        return base64.b64decode(identity_public(
            (store or self.store()).open([IDENTITY])[IDENTITY]))

    def service(self) -> ServerThread:
        settings = self.settings()
        app = build_service_app(settings, trust_level(str(self.config), settings),
                                self.store(), clock=lambda: self.now[0])
        return ServerThread(app, ssl_context=service_tls(settings))

    def gateway_settings(self, demo: Demo, url: str, store: SealedStore | None = None,
                         **release: Any) -> Settings:
        return settings_for(
            [demo_backend("demo", demo.url)],
            listen={"tls_cert_file": str(self.tmp / "gw.crt"),
                    "tls_key_file": str(self.tmp / "gw.key")},
            audit={"enabled": True, "path": str(self.tmp / "audit.jsonl")},
            key_release={"url": url, "ca_file": str(self.tmp / "ks.crt"), "keys": RELEASED,
                         "service_key": base64.b64encode(self.identity(store)).decode(),
                         "timeout_s": 5, **release})


@pytest.fixture
def world(tmp_path: Path) -> World:
    tls_context(tmp_path, "ks")
    tls_context(tmp_path, "gw")
    (tmp_path / "trust.yaml").write_text(yaml.safe_dump({**POLICY, "name": "gateway-trust"}))
    (tmp_path / "master.key").write_text(MASTER.hex())
    (tmp_path / "keys-service.yaml").write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": 0, "tls_cert_file": "ks.crt",
                   "tls_key_file": "ks.key"},
        "policy": "trust.yaml", "level": LEVEL, "keys": RELEASED,
        "store": {"path": "keys.json", "master_key_file": "master.key"},
        "attestation": {"amd_roots_dir": roots_dir(tmp_path), "amd_kds_url": None,
                        "intel_pcs_url": None, "cache_dir": None},
        "logging": {"level": "info"}}))
    world = World(tmp_path, [time.time()])
    world.store().seal_missing([*RELEASED, IDENTITY])
    return world


@pytest.fixture
def service(world: World) -> Iterator[ServerThread]:
    with world.service() as server:
        yield server


def origin(server: ServerThread) -> str:
    """The service by the name its certificate carries."""
    return f"https://localhost:{server.port}"


def ask(gateway: ServerThread, tmp: Path, content: str = "hello") -> str:
    trusting = ssl.create_default_context(cafile=str(tmp / "gw.crt"))
    client = openai.OpenAI(base_url=f"https://localhost:{gateway.port}/v1", api_key=TEST_KEY,
                           max_retries=0, http_client=httpx.Client(verify=trusting))
    reply = client.chat.completions.create(model="test-model",
                                           messages=[{"role": "user", "content": content}])
    return reply.choices[0].message.content or ""


def veil(*args: str, tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=tmp, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"https://127.0.0.1:{port}{CHALLENGE_PATH}", verify=False, timeout=1)
        except httpx.HTTPError:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the key service never listened"
            time.sleep(0.2)
        else:
            return


# -- the whole exchange -------------------------------------------------------------------------

def test_veil_keys_serve_releases_the_keys_a_gateway_then_macs_its_audit_trail_with(
        world: World, demo: Demo) -> None:
    (world.tmp / "keys.json").unlink()  # `veil keys seal` makes the store this time
    sealed = veil("keys", "seal", "--config", str(world.config), tmp=world.tmp)
    out, err = sealed.communicate(timeout=60)
    assert sealed.returncode == 0, err
    assert "audit: generated and sealed" in out
    port = free_port()
    world.config.write_text(world.config.read_text().replace("port: 0", f"port: {port}"))
    process = veil("keys", "serve", "--config", str(world.config), tmp=world.tmp)
    try:
        wait_listening(port, process)
        platform = Platform()
        settings = world.gateway_settings(demo, f"https://localhost:{port}")
        with gateway_for(settings, platform=platform) as gateway:
            assert "hello" in ask(gateway, world.tmp)
            ask(gateway, world.tmp, "and again")
            keys = gateway.app[GATEWAY].keys
            released = world.store().open(RELEASED)
            deriver = keys.hash_key()
            assert deriver is not None
            assert deriver.derive(b"tenant") == hmac.new(released["hash"], b"tenant",
                                                         hashlib.sha256).digest()
        assert len(platform.asked) == 1  # one report, for the one exchange
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=20)
    audit = world.tmp / "audit.jsonl"
    assert verify([audit], released["audit"]).message == "2 records verified, last seq 1"
    assert not verify([audit], os.urandom(32)).ok  # not some other key
    assert "key_release_granted" in log
    for key in released.values():  # the service logs decisions, never key material
        assert key.hex() not in log
        assert base64.b64encode(key).decode() not in log


def test_a_gateway_measured_as_another_image_gets_no_key_and_does_not_start(
        world: World, service: ServerThread, demo: Demo) -> None:
    settings = world.gateway_settings(demo, origin(service))
    with pytest.raises(KeyReleaseRefused, match=r"refused \(403\): the evidence does not meet "
                                                 rf"trust level '{LEVEL}'"):
        gateway_for(settings, platform=Platform(measurement=OTHER_MEASUREMENT))
    assert not (world.tmp / "audit.jsonl").exists()


def test_keys_from_anyone_but_the_service_are_refused_and_the_gateway_does_not_start(
        world: World, demo: Demo) -> None:
    """An impostor with a certificate the gateway trusts (a TLS-terminating proxy, say) that
    verifies the evidence itself and hands out keys of its own: no identity key, no start."""
    settings = world.settings()
    impostor = SealedStore(world.tmp / "impostor.json", AESGCM(MASTER))
    impostor.seal_missing([*RELEASED, IDENTITY])
    app = build_service_app(settings, trust_level(str(world.config), settings), impostor)
    with ServerThread(app, ssl_context=service_tls(settings)) as server, pytest.raises(
            KeyReleaseRefused, match="or by another service"):
        gateway_for(world.gateway_settings(demo, origin(server)), platform=Platform())
    assert not (world.tmp / "audit.jsonl").exists()


def test_the_key_service_down_means_no_start(world: World, demo: Demo) -> None:
    settings = world.gateway_settings(demo, f"https://localhost:{free_port()}")
    with pytest.raises(KeyReleaseRefused, match="cannot be reached"):
        gateway_for(settings, platform=Platform())


def test_a_key_service_whose_certificate_the_gateway_does_not_trust_gets_no_evidence(
        world: World, service: ServerThread, demo: Demo) -> None:
    platform = Platform()
    settings = world.gateway_settings(demo, origin(service), ca_file=str(world.tmp / "gw.crt"))
    with pytest.raises(KeyReleaseRefused, match="CERTIFICATE_VERIFY_FAILED"):
        gateway_for(settings, platform=platform)
    assert platform.asked == []  # nothing was sent


def test_veil_serve_with_key_release_outside_a_confidential_vm_does_not_start(
        world: World, service: ServerThread) -> None:
    config = world.tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"port": free_port(), "tls_cert_file": "gw.crt", "tls_key_file": "gw.key"},
        "self_attestation": {"tsm_root": str(world.tmp / "no-tsm")},
        "audit": {"enabled": True, "path": "audit.jsonl"},
        "key_release": {"url": origin(service), "ca_file": "ks.crt", "keys": RELEASED,
                        "service_key": base64.b64encode(world.identity()).decode()},
        "policies": {"files": ["trust.yaml"]},
        "backends": [{"name": "b", "url": "http://127.0.0.1:9"}], "models": {"m": ["b"]}}))
    process = veil("serve", "--config", str(config), tmp=world.tmp)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2  # a configuration error, before any key is asked for
    assert f"self_attestation: {world.tmp}/no-tsm not found" in err
    assert not (world.tmp / "audit.jsonl").exists()


def test_a_store_sealed_under_the_operators_hsm_key_releases_what_the_file_alone_cannot(
        world: World, demo: Demo, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIN_ENV, PIN)
    label = softhsm.labels()["fhe"]
    world.config.write_text(world.config.read_text().replace(
        "master_key_file: master.key", f"master_key_hsm_label: {label}").replace(
        "path: keys.json", "path: hsm-keys.json") + yaml.safe_dump({"hsm": softhsm.section()}))
    lines = seal(str(world.config))
    assert lines[0].startswith(f"store master key: created {label}.v1")
    assert lines[1:-1] == [f"{name}: generated and sealed in {world.tmp}/hsm-keys.json"
                           for name in [*RELEASED, IDENTITY]]
    assert lines[-1].startswith("service_key (each gateway's key_release.service_key): ")
    settings = world.settings()
    assert settings.hsm is not None
    token = Token.open(settings.hsm, os.environ)
    try:
        store = SealedStore(Path(settings.store.path), store_sealer(settings, token))
        app = build_service_app(settings, trust_level(str(world.config), settings), store)
        with ServerThread(app, ssl_context=service_tls(settings)) as service, gateway_for(
                world.gateway_settings(demo, origin(service), store),
                platform=Platform()) as gateway:
            ask(gateway, world.tmp)
        released = store.open(RELEASED)
    finally:
        token.close()
    assert verify([world.tmp / "audit.jsonl"], released["audit"]).ok
    with pytest.raises(CustodyError, match="does not open under the store's master key"):
        SealedStore(world.tmp / "hsm-keys.json", AESGCM(MASTER)).open(["audit"])


def test_the_tools_that_need_a_released_key_ask_for_it_and_say_why_they_got_none(
        world: World, service: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    """`veil keys init` (a released FHE master key) and `veil audit verify --config` (a
    released audit key) make the gateway's exchange: outside a confidential VM, none."""
    config = world.tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"tls_cert_file": "gw.crt", "tls_key_file": "gw.key"},
        "self_attestation": {"tsm_root": str(world.tmp / "no-tsm")},
        "audit": {"enabled": True, "path": "audit.jsonl"},
        "key_release": {"url": origin(service), "ca_file": "ks.crt", "keys": ["audit", "fhe"],
                        "service_key": base64.b64encode(world.identity()).decode()},
        "policies": {"files": ["trust.yaml"]},
        "backends": [{"name": "b", "url": "http://127.0.0.1:9"}], "models": {"m": ["b"]}}))
    (world.tmp / "audit.jsonl").write_text("{}\n")
    assert main(["keys", "init", "--config", str(config)]) == 1
    assert main(["audit", "verify", str(world.tmp / "audit.jsonl"), "--config", str(config)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("veil")]
    assert errors == [f"veil keys: key release: self_attestation: {world.tmp}/no-tsm not found "
                      "(needs Linux 6.7+ with configfs-tsm, inside an SEV-SNP or TDX guest)",
                      f"veil audit: key release: self_attestation: {world.tmp}/no-tsm not "
                      "found (needs Linux 6.7+ with configfs-tsm, inside an SEV-SNP or TDX "
                      "guest)"]
    assert not (world.tmp / "var").exists()  # no CKKS key made without its master key


# -- what the service refuses, asked directly ---------------------------------------------------

@dataclass
class Exchange:
    """One release request as a gateway makes it, every part replaceable."""

    nonce: bytes
    certificate: bytes  # DER
    ephemeral: X25519PrivateKey
    measurement: bytes = MEASUREMENT
    bound_to: Callable[[Exchange], bytes] | None = None  # the report_data, if not the right one
    kind: str = "sev-snp"
    endorsed: bool = True  # the VCEK sent along (else the service asks AMD KDS)
    public: bytes | None = None  # the ephemeral public key sent, if not the ephemeral's

    def ephemeral_public(self) -> bytes:
        return self.public if self.public is not None else raw_public(self.ephemeral)

    def body(self, keys: list[str] = RELEASED) -> dict[str, Any]:
        bound = self.bound_to(self) if self.bound_to else release_binding(
            self.nonce, spki_sha256(self.certificate), self.ephemeral_public())
        return {"nonce": self.nonce.hex(), "keys": keys,
                "certificate": base64.b64encode(self.certificate).decode(),
                "ephemeral_key": base64.b64encode(self.ephemeral_public()).decode(),
                "evidence": VENDORS.evidence(bound, kind=self.kind, endorsed=self.endorsed,
                                             measurement=self.measurement)["evidence"]}


def challenge(service: ServerThread) -> bytes:
    answer = httpx.post(service.url + CHALLENGE_PATH, verify=False)
    assert answer.status_code == 200
    return bytes.fromhex(answer.json()["nonce"])


def release(service: ServerThread, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(service.url + RELEASE_PATH, json=body, verify=False, timeout=10)


def exchange(service: ServerThread, world: World, **fields: Any) -> Exchange:
    certificate = ssl.PEM_cert_to_DER_cert((world.tmp / "gw.crt").read_text())
    return Exchange(challenge(service), certificate, X25519PrivateKey.generate(), **fields)


def test_good_evidence_opens_the_keys_once_and_a_replayed_nonce_is_refused(
        world: World, service: ServerThread) -> None:
    asked = exchange(service, world)
    granted = release(service, asked.body())
    assert granted.status_code == 200, granted.text
    keys = open_keys(asked.ephemeral, asked.nonce, RELEASED, granted.json(),
                     world.identity())
    assert keys == world.store().open(RELEASED)
    assert all(k.hex() not in granted.text for k in keys.values())  # encrypted, not in the clear
    replayed = release(service, asked.body())
    assert replayed.status_code == 403
    assert replayed.json() == {"error": "unknown, used or expired nonce: ask for a new "
                                        "challenge"}


def test_a_tdx_gateway_with_the_approved_mrtd_gets_its_keys_and_another_none(
        world: World) -> None:
    """Intel's side of the same verifier: the quote and the collateral the gateway sends,
    judged to the test Intel root handed in as the gateway's AttestationService takes it."""
    settings = world.settings().model_copy(update={"level": TDX_LEVEL})
    level = TrustLevel.model_validate(tdx_policy()["trust_levels"][TDX_LEVEL])
    app = build_service_app(settings, level, world.store(), roots=VENDORS.roots())
    with ServerThread(app, ssl_context=service_tls(settings)) as service:
        good = exchange(service, world, kind="tdx", measurement=MRTD)
        granted = release(service, good.body())
        assert granted.status_code == 200, granted.text
        assert open_keys(good.ephemeral, good.nonce, RELEASED, granted.json(),
                         world.identity()) == \
            world.store().open(RELEASED)
        other = exchange(service, world, kind="tdx", measurement=bytes(48))
        refused = release(service, other.body())
    assert refused.json() == {"error": f"the evidence does not meet trust level {TDX_LEVEL!r}"}


def test_amd_kds_unreachable_is_no_verdict_on_the_gateway(world: World) -> None:
    settings = world.settings()
    attestation = settings.attestation.model_copy(
        update={"amd_kds_url": f"http://127.0.0.1:{free_port()}"})
    settings = settings.model_copy(update={"attestation": attestation})
    app = build_service_app(settings, trust_level(str(world.config), settings), world.store())
    with ServerThread(app, ssl_context=service_tls(settings)) as service:
        unendorsed = exchange(service, world, endorsed=False)
        answer = release(service, unendorsed.body())
    assert answer.status_code == 503
    assert answer.json() == {"error": "what verifying the evidence needs could not be "
                                      "fetched: try again"}


def test_a_refused_request_uses_its_nonce_up(world: World, service: ServerThread) -> None:
    asked = exchange(service, world, measurement=OTHER_MEASUREMENT)
    assert release(service, asked.body()).status_code == 403
    asked.measurement = MEASUREMENT  # good evidence now, but for a nonce already spent
    assert "used or expired" in release(service, asked.body()).json()["error"]


def test_an_expired_nonce_is_refused(world: World, service: ServerThread) -> None:
    asked = exchange(service, world)
    world.now[0] += world.settings().challenge_ttl_s + 1
    assert "used or expired" in release(service, asked.body()).json()["error"]


def test_a_nonce_the_service_never_gave_is_refused(world: World, service: ServerThread) -> None:
    asked = exchange(service, world)
    asked.nonce = os.urandom(32)
    assert release(service, asked.body()).status_code == 403


def test_evidence_bound_to_another_tls_key_is_refused(world: World,
                                                      service: ServerThread) -> None:
    _, other = tls_context(world.tmp, "other")
    asked = exchange(service, world, bound_to=lambda e: release_binding(
        e.nonce, spki_sha256(other), raw_public(e.ephemeral)))
    refused = release(service, asked.body())
    assert refused.status_code == 403
    assert refused.json() == {"error": "the evidence does not verify, or is not bound to this "
                                       "exchange"}


def test_evidence_bound_to_another_ephemeral_key_is_refused(world: World,
                                                            service: ServerThread) -> None:
    """What a proxy that swapped in its own key (to read the reply) would send."""
    theirs = X25519PrivateKey.generate()
    asked = exchange(service, world, bound_to=lambda e: release_binding(
        e.nonce, spki_sha256(e.certificate), raw_public(theirs)))
    assert release(service, asked.body()).status_code == 403


def test_a_backends_evidence_for_the_same_nonce_is_refused(world: World,
                                                          service: ServerThread) -> None:
    asked = exchange(service, world, bound_to=lambda e: binding(
        e.nonce, spki_sha256(e.certificate)))
    assert release(service, asked.body()).status_code == 403


def test_an_ephemeral_key_with_no_shared_secret_gets_no_keys(world: World,
                                                             service: ServerThread) -> None:
    """Good evidence bound to the all-zero point: encrypting to it would be encrypting to all."""
    refused = release(service, exchange(service, world, public=bytes(32)).body())
    assert refused.status_code == 400
    assert refused.json() == {"error": "ephemeral_key: not a usable X25519 public key"}


def test_keys_the_service_does_not_release_are_refused(world: World,
                                                       service: ServerThread) -> None:
    asked = exchange(service, world)
    refused = release(service, asked.body(keys=["audit", "fhe"]))
    assert refused.status_code == 403
    assert refused.json() == {"error": "this service releases only audit, hash"}


def test_a_reply_opens_only_for_the_exchange_it_was_made_for(
        world: World, service: ServerThread) -> None:
    asked = exchange(service, world)
    reply = release(service, asked.body()).json()
    with pytest.raises(EvidenceError, match="does not open"):
        open_keys(asked.ephemeral, os.urandom(32), RELEASED, reply, world.identity())
    with pytest.raises(EvidenceError, match="does not open"):
        open_keys(X25519PrivateKey.generate(), asked.nonce, RELEASED, reply, world.identity())
    with pytest.raises(EvidenceError, match="keys asked for"):
        open_keys(asked.ephemeral, asked.nonce, ["audit"], reply, world.identity())
    narrowed = {**reply, "keys": ["audit"]}  # the AAD names both keys: it does not open
    with pytest.raises(EvidenceError, match="does not open"):
        open_keys(asked.ephemeral, asked.nonce, ["audit"], narrowed, world.identity())
