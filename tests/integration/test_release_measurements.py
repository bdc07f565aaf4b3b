"""The whole gateway with a trust level whose SEV-SNP measurement comes only from a signed
release (`measurements_from`, a bundle of the private Sigstore in tests/sigstore_instance.py):
the backend measured as the release says gets the data, a policy reload with the next release
moves the data to the machine that runs it, and a forged bundle is refused at reload, leaving
the verified policy in force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import GATEWAY
from gateway.errors import ConfigError
from gateway.policy.loader import load_policy
from tests.attestation_ca import MEASUREMENT, tls_context
from tests.integration.test_attested_routing import (
    ConfidentialBackend,
    attested,
    chat,
    roots_dir,
    wait_attested,
    wait_until,
)
from tests.servers import TEST_POLICY, ServerThread, gateway_for, settings_for
from tests.sigstore_instance import PrivateSigstore, Workflow, multiplatform_statement

LEVEL = "released-cpu"
NEXT = bytes(range(100, 148))  # the next release's launch measurement


def release(sigstore: PrivateSigstore, bundle: Path, measurement: bytes,
            tag: str = "v1.4.2") -> None:
    bundle.write_text(json.dumps(sigstore.bundle(
        multiplatform_statement(measurement.hex(), "11" * 48, "22" * 48),
        Workflow(ref=f"refs/tags/{tag}"))))


def test_data_goes_where_the_signed_release_runs(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sigstore = PrivateSigstore()
    bundle, root = tmp_path / "release.sigstore.json", tmp_path / "trusted_root.json"
    root.write_text(json.dumps(sigstore.trusted_root()))
    release(sigstore, bundle, MEASUREMENT)
    policy = {**TEST_POLICY, "data_classes": {"personal": {"entities": ["EMAIL"]}},
              "routing": {"personal": {"require": LEVEL}},
              "trust_levels": {LEVEL: {"max_age_s": 600, "sev-snp": {}, "measurements_from": [{
                  "bundle": str(bundle), "trusted_root": str(root),
                  "repository": Workflow().repository, "workflow": Workflow().path}]}}}
    contexts = {name: tls_context(tmp_path, name) for name in ("current", "next")}
    backends = {"current": ConfidentialBackend(contexts["current"][1]),
                "next": ConfidentialBackend(contexts["next"][1], measurement=NEXT)}
    with ServerThread(backends["current"].app(), ssl_context=contexts["current"][0]) as a, \
            ServerThread(backends["next"].app(), ssl_context=contexts["next"][0]) as b:
        settings = settings_for([attested("next", b.url), attested("current", a.url)],
                                policy=policy,
                                attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings) as gw:
            wait_attested(gw, "current", LEVEL)
            wait_until(lambda: backends["next"].nonces)
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
            assert (backends["current"].served, backends["next"].served) == (1, 0)

            release(sigstore, bundle, NEXT, tag="v1.5.0")
            policies = gw.app[GATEWAY].policies
            assert gw.call(policies.reload("test"))
            wait_attested(gw, "next", LEVEL)
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
            assert (backends["current"].served, backends["next"].served) == (1, 1)

            forged = json.loads(bundle.read_text())
            forged["dsseEnvelope"]["payload"] = forged["dsseEnvelope"]["payload"][:-4] + "AAAA"
            bundle.write_text(json.dumps(forged))
            digest = policies.current.policies[0].digest
            capsys.readouterr()
            assert not gw.call(policies.reload("test"))
            assert f"{bundle}: does not verify" in capsys.readouterr().err
            assert policies.current.policies[0].digest == digest  # v1.5.0 stays in force
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
            assert backends["next"].served == 2


def test_a_bundle_url_is_fetched_once_and_kept_only_when_it_verifies(tmp_path: Path) -> None:
    sigstore = PrivateSigstore()
    root = tmp_path / "trusted_root.json"
    root.write_text(json.dumps(sigstore.trusted_root()))
    good = sigstore.bundle(multiplatform_statement(MEASUREMENT.hex(), "11" * 48, "22" * 48))
    forged = json.loads(json.dumps(good))
    forged["dsseEnvelope"]["signatures"][0]["sig"] = "MEUCIQ" + "A" * 90
    served: list[str] = []
    answer = {"body": forged}

    async def bundle(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response(answer["body"])

    app = web.Application()
    app.router.add_get("/releases/v1.4.2.sigstore.json", bundle)
    cached = tmp_path / "cache" / "v1.4.2.sigstore.json"
    with ServerThread(app) as server:
        path = tmp_path / "policy.yaml"
        path.write_text(json.dumps({**TEST_POLICY, "trust_levels": {LEVEL: {
            "sev-snp": {}, "measurements_from": [{
                "bundle": "cache/v1.4.2.sigstore.json",
                "url": server.url + "/releases/v1.4.2.sigstore.json",
                "trusted_root": "trusted_root.json", "repository": Workflow().repository,
                "workflow": Workflow().path}]}}}))
        with pytest.raises(ConfigError, match="does not verify"):
            load_policy(path)
        assert not cached.exists()  # a bundle that does not verify is not kept
        answer["body"] = good
        level = load_policy(path).policy.trust_levels[LEVEL]
        assert level.release_labels("sev-snp", {"snp": MEASUREMENT.hex()})
        assert json.loads(cached.read_text()) == good
        assert len(served) == 2
    level = load_policy(path).policy.trust_levels[LEVEL]  # the server is gone: the file is kept
    assert level.release_labels("sev-snp", {"snp": MEASUREMENT.hex()})
    assert len(served) == 2
    cached.unlink()
    with pytest.raises(ConfigError, match="cannot fetch the bundle"):
        load_policy(path)
