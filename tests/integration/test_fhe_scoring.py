"""Encrypted semantic scoring end to end: `veil scorer serve` in its own process, the gateway
in front of the demo model, a recording proxy between them that keeps every byte the scorer was
sent. A prompt about a protected topic is blocked; an unrelated one passes; the scorer never
receives the secret key, only evaluation keys and ciphertexts; key rotation re-keys the scorer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import tenseal.sealapi as seal
import yaml
from aiohttp import ClientSession, web

from gateway.app import GATEWAY
from gateway.fhe.build import build_model
from gateway.fhe.embed import Embedder, TextEmbedder
from gateway.fhe.keys import KeyStore
from gateway.fhe.seal import load, new_context, to_bytes
from gateway.fhe.static_embed import StaticEmbedder
from tests.conftest import Demo
from tests.servers import (
    TEST_KEY,
    TEST_POLICY,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)
from tests.static_table import static_table_dir

ROOT = Path(__file__).parents[2]
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
MASTER_HEX = "11" * 32
EXAMPLES = {"kind": "reference_set", "aggregate": "max", "labels": {
    "m-and-a": ["Draft the term sheet for our acquisition of Globex Corporation",
                "What price should we offer in the merger with Initech?",
                "Summarize the due diligence findings for the takeover target"],
    "layoffs": ["Prepare the list of employees affected by next month's layoffs",
                "Write the announcement for the workforce reduction plan"]}}
# Each embedder has its own scale of cosines (tests/bench/embedders.py): the static table's
# are lower, deal talk diluted in a window of baking scores ~0.34 there against ~0.61.
THRESHOLDS = {"static": 0.3, "minilm": 0.55}


def policy_for(embedder: str) -> dict[str, Any]:
    threshold = THRESHOLDS[embedder]
    return {**TEST_POLICY,
            "data_classes": {"confidential-topic": {}},
            "semantic": [{"name": "no-deals", "scorer": "vendor", "model": "topics",
                          "label": "m-and-a", "threshold": threshold, "block": True},
                         {"name": "hr", "scorer": "vendor", "model": "topics",
                          "label": "layoffs", "threshold": threshold,
                          "data_class": "confidential-topic"}]}


POLICY = policy_for("static")  # the suite's embedder (tests/servers.py settings_for)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Recorder:
    """Forwards to the scorer and keeps what it was sent."""

    target: str
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    # ("PUT", key id) for evaluation keys, ("POST", key id) for a query, in order
    key_ids: list[tuple[str, str]] = field(default_factory=list)
    packings: list[str] = field(default_factory=list)  # X-Veil-Queries of each query

    def app(self) -> web.Application:
        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            self.sent.append((request.method, request.path, body))
            if request.method == "PUT":
                self.key_ids.append(("PUT", request.path.rsplit("/", 1)[-1]))
            elif request.method == "POST":
                self.key_ids.append(("POST", request.headers.get("X-Veil-Key-Id", "")))
                self.packings.append(request.headers.get("X-Veil-Queries", ""))
            async with ClientSession() as session, session.request(
                    request.method, self.target + request.path_qs, data=body,
                    headers={k: v for k, v in request.headers.items()
                             if k.lower() in ("x-veil-key-id", "x-veil-queries",
                                            "content-type")}) as upstream:
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    content_type=upstream.content_type)

        app = web.Application(client_max_size=128 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", forward)
        return app


def embedder_named(name: str) -> TextEmbedder:
    return Embedder() if name == "minilm" else StaticEmbedder(static_table_dir())


@contextmanager
def running_scorer(tmp: Path, embedder: str = "static") -> Iterator[str]:
    """`veil scorer serve` with the topics model built with `embedder`, in its own process;
    yields its URL."""
    (tmp / "models").mkdir()
    examples = tmp / "topics.yaml"
    examples.write_text(yaml.safe_dump(EXAMPLES))
    build_model(examples, tmp / "models" / "topics.npz", embedder_named(embedder))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "scorer", "serve", "--models", str(tmp / "models"),
         "--keys", str(tmp / "received"), "--port", str(port), "--workers", "1"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_scorer(tmp_path_factory.mktemp("scorer")) as url:
        yield url


@pytest.fixture(scope="module")
def minilm_scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same topics, built with MiniLM (fhe.embedder: minilm, and remote embeddings)."""
    with running_scorer(tmp_path_factory.mktemp("scorer"), "minilm") as url:
        yield url


@dataclass
class World:
    gateway: ServerThread
    recorder: Recorder
    store: KeyStore


@contextmanager
def world_of(scorer: str, demo: Demo, tmp_path: Path, embedder: str) -> Iterator[World]:
    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    store = KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None)
    store.init()
    recorder = Recorder(scorer)
    with ServerThread(recorder.app()) as proxy:
        fhe = {"keys_dir": str(tmp_path / "keys"), "master_key_env": "VEIL_TEST_FHE_MASTER",
               "scorers": [{"name": "vendor", "url": proxy.url, "timeout_s": 30}],
               "embedder": embedder}
        settings = settings_for([demo_backend("d", demo.url)], policy=policy_for(embedder),
                                fhe=fhe)
        with gateway_for(settings) as gw:
            yield World(gw, recorder, store)


@pytest.fixture
def world(scorer: str, demo: Demo, tmp_path: Path) -> Iterator[World]:
    with world_of(scorer, demo, tmp_path, "static") as world:
        yield world


@pytest.fixture(params=["static", "minilm"])
def either_world(request: pytest.FixtureRequest, demo: Demo, tmp_path: Path
                 ) -> Iterator[World]:
    """A gateway embedding with each embedder, its scorer's model built with the same one."""
    scorer = request.getfixturevalue("scorer" if request.param == "static" else "minilm_scorer")
    with world_of(scorer, demo, tmp_path, request.param) as world:
        yield world


def chat(url: str, content: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "test-model", "messages": [{"role": "user", "content": content}]})


def test_protected_topic_is_blocked_and_others_pass(either_world: World, demo: Demo) -> None:
    world = either_world
    blocked = chat(world.gateway.url, "Can you draft a term sheet for acquiring Globex Corp?")
    assert blocked.status_code == 400, blocked.text
    assert "semantic.no-deals" in blocked.json()["error"]["message"]
    assert demo.state.last_body is None
    fine = chat(world.gateway.url, "What is a good recipe for sourdough bread?")
    assert fine.status_code == 200, fine.text
    metrics = httpx.get(world.gateway.url + "/metrics").text
    assert 'veil_scorer_duration_seconds_count{scorer="vendor"}' in metrics


BREAD = ("Sourdough bread needs a lively starter, flour, water and salt. Knead the dough, let "
         "it rise overnight, shape it and bake it in a hot Dutch oven until the crust is deep "
         "brown. ")
DEAL = ("We are preparing to acquire Globex Corporation. Draft the term sheet for the "
        "acquisition, propose the price per share we should offer in the merger, and summarize "
        "the due diligence findings on the takeover target. ")


def test_protected_text_at_the_end_of_a_long_prompt_is_blocked(either_world: World,
                                                               demo: Demo) -> None:
    """The whole prompt is scored, chunk by chunk, not its first 256 tokens: deal talk after
    ~4 KB of baking is still found (and the baking alone still passes)."""
    world = either_world
    assert chat(world.gateway.url, BREAD * 20).status_code == 200
    demo.state.last_body = None
    blocked = chat(world.gateway.url, BREAD * 20 + DEAL)
    assert blocked.status_code == 400, blocked.text
    assert "semantic.no-deals" in blocked.json()["error"]["message"]
    assert demo.state.last_body is None


SEMANTIC_CASES = {"cases": [
    {"name": "deal talk is blocked",
     "prompt": "Can you draft a term sheet for acquiring Globex Corp?",
     "scores": {"vendor/topics/m-and-a": 0.8, "vendor/topics/layoffs": 0.2},
     "expect": {"outcome": "block", "rule": "semantic.no-deals"}},
    {"name": "layoffs are a confidential topic, not a block",
     "prompt": "Prepare the workforce reduction announcement for next month",
     "scores": {"vendor/topics/m-and-a": 0.2, "vendor/topics/layoffs": 0.8},
     "expect": {"outcome": "forward", "rule": "default"}},
    {"name": "bread is fine",
     "prompt": "What is a good recipe for sourdough bread?",
     "scores": {"vendor/topics/m-and-a": 0.1, "vendor/topics/layoffs": 0.1},
     "expect": {"outcome": "forward", "rule": "default"}},
]}


def test_policy_cases_with_scores_decide_as_the_gateway_does(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same cases both ways: `veil policy test` with the scores the cases give, and the
    running gateway with the scores the encrypted scorer computes."""
    from gateway.cli import main  # noqa: PLC0415

    policy_file = world.gateway.app[GATEWAY].settings.policies.files[0]
    cases_file = tmp_path / "semantic.cases.yaml"
    cases_file.write_text(yaml.safe_dump(SEMANTIC_CASES))
    assert main(["policy", "test", policy_file, "--cases", str(cases_file)]) == 0, \
        capsys.readouterr().out
    for case in SEMANTIC_CASES["cases"]:
        r = chat(world.gateway.url, case["prompt"])
        if case["expect"]["outcome"] == "block":
            assert r.status_code == 400, (case["name"], r.text)
            assert case["expect"]["rule"] in r.json()["error"]["message"]
        else:
            assert r.status_code == 200, (case["name"], r.text)


def test_scorer_only_ever_receives_evaluation_keys_and_ciphertexts(world: World) -> None:
    chat(world.gateway.url, "Plan the workforce reduction announcement")
    chat(world.gateway.url, "Tell me about the history of Rome")
    secret = to_bytes(world.store.load().secret)
    context = new_context()
    kinds = []
    for method, _, body in world.recorder.sent:
        assert secret[64:192] not in body
        if method == "PUT":
            load(seal.GaloisKeys(), context, body)
            kinds.append("galois")
        elif method == "POST":
            ciphertext = seal.Ciphertext()
            load(ciphertext, context, body)
            assert ciphertext.size() == 2
            kinds.append("ciphertext")
        if body:  # nothing sent parses as a secret key
            with pytest.raises((ValueError, RuntimeError)):
                load(seal.SecretKey(), context, body)
    assert kinds.count("galois") == 1  # once per key epoch
    assert kinds.count("ciphertext") >= 2


def test_key_rotation_rekeys_the_scorer(world: World) -> None:
    assert chat(world.gateway.url, "history of Rome").status_code == 200
    world.store.rotate()
    assert chat(world.gateway.url, "history of Greece").status_code == 200
    puts = [path for method, path, _ in world.recorder.sent if method == "PUT"]
    assert len(puts) == 2
    assert puts[1].endswith(world.store.current_id() or "?")


def test_scorer_down_fails_closed(demo: Demo, tmp_path: Path) -> None:
    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    fhe: dict[str, Any] = {"keys_dir": str(tmp_path / "keys"),
                           "master_key_env": "VEIL_TEST_FHE_MASTER",
                           "scorers": [{"name": "vendor", "url": "http://127.0.0.1:9"}]}
    for mode, status in (("closed", 503), ("open", 200)):
        rules = {**POLICY, "fail_mode": {"scorer": mode}}
        with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules,
                                      fhe=fhe)) as gw:
            r = chat(gw.url, "anything at all")
        assert r.status_code == status, r.text
        if mode == "closed":
            assert r.json()["error"]["code"] == "scorer_failed"


def test_a_prompt_past_max_chunks_is_refused_not_scored_in_part(scorer: str, demo: Demo,
                                                               tmp_path: Path) -> None:
    """fhe.max_chunks bounds the scorer work one request can cause: past it the request fails
    per fail_mode.scorer (closed: 503, nothing forwarded), and a prompt within it is scored."""
    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    fhe = {"keys_dir": str(tmp_path / "keys"), "master_key_env": "VEIL_TEST_FHE_MASTER",
           "scorers": [{"name": "vendor", "url": scorer, "timeout_s": 30}], "max_chunks": 2}
    for mode, status in (("closed", 503), ("open", 200)):
        rules = {**POLICY, "fail_mode": {"scorer": mode}}
        with gateway_for(settings_for([demo_backend("d", demo.url)], policy=rules,
                                      fhe=fhe)) as gw:
            demo.state.last_body = None
            r = chat(gw.url, BREAD * 20 + DEAL)
            assert r.status_code == status, r.text
            if mode == "closed":
                assert r.json()["error"]["code"] == "scorer_failed"
                assert demo.state.last_body is None
                within = chat(gw.url, BREAD + DEAL)  # two windows: scored, and blocked
                assert within.status_code == 400, within.text


def test_a_model_built_with_another_embedder_is_refused(minilm_scorer: str, demo: Demo,
                                                       tmp_path: Path) -> None:
    """A gateway embedding with the static table, a scorer whose model was built with MiniLM:
    the two spaces do not compare, so the request fails closed and nothing is forwarded."""
    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    fhe = {"keys_dir": str(tmp_path / "keys"), "master_key_env": "VEIL_TEST_FHE_MASTER",
           "scorers": [{"name": "vendor", "url": minilm_scorer, "timeout_s": 30}]}
    with gateway_for(settings_for([demo_backend("d", demo.url)], policy=POLICY,
                                  fhe=fhe)) as gw:
        demo.state.last_body = None
        r = chat(gw.url, "What is a good recipe for sourdough bread?")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "scorer_failed"
    assert demo.state.last_body is None


def test_embeddings_from_an_attested_backend(minilm_scorer: str, tmp_path: Path) -> None:
    """fhe.embedding_backend: the prompt's embedding comes from the attested backend over the
    pinned connection; with no valid attestation, scoring fails closed. The backend serves
    MiniLM's space: the scorer's model is built with MiniLM."""
    from tests.integration.test_attested_routing import (  # noqa: PLC0415
        ConfidentialBackend,
        attested,
        roots_dir,
        tls_context,
    )

    embedder = Embedder()
    embedded: list[str] = []

    async def embeddings(request: web.Request) -> web.Response:
        texts = (await request.json())["input"]
        embedded.append(texts[0])
        return web.json_response({"object": "list", "data": [
            {"object": "embedding", "index": i, "embedding": embedder.embed(text).tolist()}
            for i, text in reversed(list(enumerate(texts)))]})  # in any order, by index

    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    fhe = {"keys_dir": str(tmp_path / "keys"), "master_key_env": "VEIL_TEST_FHE_MASTER",
           "scorers": [{"name": "vendor", "url": minilm_scorer, "timeout_s": 30}],
           "embedding_backend": "tee", "embedding_model": "all-minilm"}
    for measurement_ok in (True, False):
        context, certificate = tls_context(tmp_path, f"tee-{measurement_ok}")
        backend = ConfidentialBackend(certificate) if measurement_ok else \
            ConfidentialBackend(certificate, replay=True)
        app = backend.app()
        app.router.add_post("/v1/embeddings", embeddings)
        with ServerThread(app, ssl_context=context) as tee:
            settings = settings_for([attested("tee", tee.url)], policy=policy_for("minilm"),
                                    fhe=fhe,
                                    attestation={"amd_roots_dir": roots_dir(tmp_path)})
            with gateway_for(settings) as gw:
                if measurement_ok:
                    deadline = time.monotonic() + 15
                    while gw.app[GATEWAY].attestation.pin("tee") is None:
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                    blocked = chat(gw.url, "Draft the term sheet for acquiring Globex Corp")
                    assert blocked.status_code == 400, blocked.text
                    assert chat(gw.url, "A recipe for sourdough bread").status_code == 200
                    assert len(embedded) == 2
                else:
                    deadline = time.monotonic() + 15
                    while not backend.nonces:  # asked, and its replayed evidence refused
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                    refused = chat(gw.url, "A recipe for sourdough bread")
                    assert refused.status_code == 503
                    assert refused.json()["error"]["code"] == "scorer_failed"
                    assert len(embedded) == 2  # nothing sent to an unattested backend


def start_scorer(models: Path, received: Path, port: int,
                 *extra: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "scorer", "serve", "--models", str(models),
         "--keys", str(received), "--port", str(port), "--workers", "1", *extra],
        cwd=ROOT, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_model_deployed_later_gets_the_rotations_it_needs(demo: Demo, tmp_path: Path) -> None:
    """The scorer restarts with a larger model; the keys it kept lack that model's rotations:
    it answers 409, the gateway sends keys for every model, and scoring proceeds."""
    import numpy as np  # noqa: PLC0415

    from gateway.fhe.scoring import ModelFile, save_model  # noqa: PLC0415
    from gateway.fhe.static_embed import NAME  # noqa: PLC0415

    models, received = tmp_path / "models", tmp_path / "received"
    models.mkdir()
    rng = np.random.default_rng(0)

    def model(name: str, rows: int) -> None:
        weights = rng.standard_normal((rows, 384))
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)
        save_model(models / f"{name}.npz", ModelFile(name, "reference_set", weights,
                                                     ("x",) * rows, None, "max", NAME))

    model("small", 10)
    os.environ["VEIL_TEST_FHE_MASTER"] = MASTER_HEX
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    port = free_port()
    scorer = start_scorer(models, received, port)
    recorder = Recorder(f"http://127.0.0.1:{port}")
    rules = [{"name": f"r-{m}", "scorer": "vendor", "model": m, "label": "x", "threshold": 0.99,
              "block": True} for m in ("small", "large")]
    try:
        with ServerThread(recorder.app()) as proxy:
            fhe = {"keys_dir": str(tmp_path / "keys"), "master_key_env": "VEIL_TEST_FHE_MASTER",
                   "scorers": [{"name": "vendor", "url": proxy.url, "timeout_s": 30}]}
            small_only = settings_for([demo_backend("d", demo.url)], fhe=fhe,
                                      policy={**TEST_POLICY, "semantic": rules[:1]})
            with gateway_for(small_only) as gw:
                assert chat(gw.url, "hello").status_code == 200
            scorer.send_signal(signal.SIGTERM)
            scorer.wait(timeout=20)
            model("large", 5000)  # needs rotations the small model did not (16 baby steps)
            scorer = start_scorer(models, received, port)
            both = settings_for([demo_backend("d", demo.url)], fhe=fhe,
                                policy={**TEST_POLICY, "semantic": rules})
            with gateway_for(both) as gw:
                assert chat(gw.url, "hello again").status_code == 200, "scoring failed"
    finally:
        scorer.send_signal(signal.SIGTERM)
        scorer.wait(timeout=20)
    puts = [body for method, _, body in recorder.sent if method == "PUT"]
    assert len(puts) == 2
    assert len(puts[1]) > len(puts[0])  # the second set covers both models' rotations


def test_old_epochs_are_dropped_after_the_grace_period(world: World, tmp_path: Path) -> None:
    """`veil scorer serve --grace-s`: after a rotation the old epoch's keys, no longer used,
    leave the scorer's disk while the current epoch's stay; once the current one goes unused
    too it is dropped as well, and the gateway's next request uploads it again."""
    (tmp_path / "models").mkdir()
    examples = tmp_path / "topics.yaml"
    examples.write_text(yaml.safe_dump(EXAMPLES))
    build_model(examples, tmp_path / "models" / "topics.npz", embedder_named("static"))
    received, port = tmp_path / "received", free_port()
    scorer = start_scorer(tmp_path / "models", received, port, "--grace-s", "2")
    world.recorder.target = f"http://127.0.0.1:{port}"
    try:
        assert chat(world.gateway.url, "history of Rome").status_code == 200
        old = world.store.current_id()
        world.store.rotate()
        new = world.store.current_id()
        assert {p.stem for p in received.glob("*.galois")} == {old}
        deadline = time.monotonic() + 20
        while (received / f"{old}.galois").exists():  # the new epoch in use all along
            assert chat(world.gateway.url, "history of Greece").status_code == 200
            assert time.monotonic() < deadline, "the old epoch was never dropped"
            time.sleep(0.3)
        assert {p.stem for p in received.glob("*.galois")} == {new}
        deadline = time.monotonic() + 20
        while (received / f"{new}.galois").exists():  # now unused
            assert time.monotonic() < deadline, "the unused epoch was never dropped"
            time.sleep(0.2)
        puts_before = sum(method == "PUT" for method, _, _ in world.recorder.sent)
        assert chat(world.gateway.url, "history of Carthage").status_code == 200
        assert sum(method == "PUT" for method, _, _ in world.recorder.sent) == puts_before + 1
        assert (received / f"{new}.galois").exists()
    finally:
        scorer.send_signal(signal.SIGTERM)
        scorer.wait(timeout=20)
