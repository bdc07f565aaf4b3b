"""One FHE key epoch for every replica (`fhe.keys_in: redis`), against a real Redis and the
real scorer: two gateways, each behind its own recording proxy to one scorer, so the test sees
which key id each gateway's queries and evaluation keys carry. A rotation made with `veil keys
rotate` (as an operator on one replica's host) is used by both within seconds; Redis stopping
leaves both scoring under the epoch they hold; a pointer no gateway wrote, or a replayed older
one, is never followed."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
import redis

from gateway.fhe.keys import new_key_id
from gateway.fhe.shared_keys import CURRENT, KEYS
from tests.conftest import Demo
from tests.integration.test_fhe_scoring import (
    MASTER_HEX,
    POLICY,
    Recorder,
    chat,
    running_scorer,
)
from tests.redis_server import RedisServer
from tests.servers import ServerThread, demo_backend, gateway_for, settings_for

MASTER_ENV = "VEIL_TEST_FHE_MASTER"
BREAD = "What is a good recipe for sourdough bread?"


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_scorer(tmp_path_factory.mktemp("scorer")) as url:
        yield url


@dataclass
class Replicas:
    urls: list[str]
    recorders: list[Recorder]
    redis: RedisServer
    config: Path  # what an operator runs `veil keys` with, on any replica's host

    def keys(self, command: str) -> None:
        """`veil keys <command> --config ...`, as an operator runs it."""
        from gateway.cli import main  # noqa: PLC0415

        assert main(["keys", command, "--config", str(self.config)]) == 0

    def current(self) -> str:
        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            return str(client.get(CURRENT)).split()[0]
        finally:
            client.close()

    def queried_with(self, replica: int) -> str:
        """The key id of this replica's latest query to the scorer."""
        return [k for method, k in self.recorders[replica].key_ids if method == "POST"][-1]


def operator_config(path: Path, redis_url: str) -> Path:
    path.write_text(f"""
fhe:
  keys_in: redis
  keys_dir: "{path.parent / 'no-keys-here'}"
  master_key_env: {MASTER_ENV}
  scorers: [{{name: vendor, url: "http://127.0.0.1:9"}}]
state: {{redis_url: "{redis_url}"}}
policies: {{files: ["{path.parent / 'policy.yaml'}"]}}
backends: []
models: {{}}
""")
    (path.parent / "policy.yaml").write_text("version: 1\nname: p\n")
    return path


@pytest.fixture
def replicas(scorer: str, demo: Demo, tmp_path: Path) -> Iterator[Replicas]:
    os.environ[MASTER_ENV] = MASTER_HEX
    with ExitStack() as stack:
        server = stack.enter_context(RedisServer(tmp_path))
        config = operator_config(tmp_path / "config.yaml", server.url)
        world = Replicas([], [Recorder(scorer), Recorder(scorer)], server, config)
        world.keys("init")
        for recorder in world.recorders:
            proxy = stack.enter_context(ServerThread(recorder.app()))
            fhe = {"keys_in": "redis", "keys_dir": str(tmp_path / "unused"),
                   "master_key_env": MASTER_ENV,
                   "scorers": [{"name": "vendor", "url": proxy.url, "timeout_s": 30}]}
            settings = settings_for([demo_backend("d", demo.url)], policy=POLICY, fhe=fhe,
                                    state={"redis_url": server.url, "timeout_s": 0.5})
            world.urls.append(stack.enter_context(gateway_for(settings)).url)
        yield world


def score_on_both(world: Replicas) -> list[str]:
    """One scored request per replica (a blocked topic: scoring decided it); their key ids."""
    for url in world.urls:
        r = chat(url, "Draft the term sheet for our acquisition of Globex Corporation")
        assert r.status_code == 400, r.text
        assert "semantic.no-deals" in r.text
    return [world.queried_with(i) for i in range(len(world.urls))]


def until_both_use(world: Replicas, key_id: str, within_s: float) -> float:
    """Score on both replicas until both query under `key_id`; how long it took."""
    started = time.monotonic()
    while True:
        if score_on_both(world) == [key_id, key_id]:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, "a replica stayed on the old epoch"
        time.sleep(0.1)


def test_a_rotation_on_one_replica_is_used_by_the_others(replicas: Replicas) -> None:
    first = replicas.current()
    assert score_on_both(replicas) == [first, first]
    replicas.keys("rotate")  # as an operator would, on one replica's host
    second = replicas.current()
    assert second > first
    assert until_both_use(replicas, second, within_s=4) < 4
    assert chat(replicas.urls[0], BREAD).status_code == 200
    # one epoch for all: the scorer got evaluation keys once per epoch, not once per replica
    puts = [k for r in replicas.recorders for method, k in r.key_ids if method == "PUT"]
    assert sorted(puts) == [first, second]


def test_redis_down_keeps_the_epoch_then_a_later_rotation_is_picked_up(
        replicas: Replicas) -> None:
    first = replicas.current()
    assert score_on_both(replicas) == [first, first]
    saved = redis.Redis.from_url(replicas.redis.url)
    hash_, pointer = saved.hgetall(KEYS), saved.get(CURRENT)
    saved.close()
    replicas.redis.stop()
    time.sleep(1.2)  # a check is due on both
    for _ in range(3):
        assert score_on_both(replicas) == [first, first]  # a rotation is not a revocation
        assert chat(replicas.urls[1], BREAD).status_code == 200
    page = httpx.get(replicas.urls[0] + "/metrics").text
    assert 'veil_state_failures_total{concern="fhe_keys"}' in page
    replicas.redis.start()  # back, with its data (as a persisted Redis comes back)
    restored = redis.Redis.from_url(replicas.redis.url)
    restored.hset(KEYS, mapping=hash_)
    restored.set(CURRENT, pointer)
    restored.close()
    replicas.keys("rotate")
    second = replicas.current()
    assert until_both_use(replicas, second, within_s=4) < 4  # the same gateways, no restart


def test_planted_and_replayed_pointers_are_ignored(replicas: Replicas) -> None:
    first = replicas.current()
    assert score_on_both(replicas) == [first, first]
    client = redis.Redis.from_url(replicas.redis.url, decode_responses=True)
    genuine_first = client.get(CURRENT)
    replicas.keys("rotate")
    second = replicas.current()
    until_both_use(replicas, second, within_s=4)
    planted = new_key_id(after=second)  # newer-looking, and not ours
    client.hset(KEYS, planted, "AAAA")
    for pointer in (planted, f"{planted} {'0' * 64}", genuine_first):
        client.set(CURRENT, str(pointer))
        time.sleep(1.2)  # a check is due on both
        for _ in range(2):
            assert score_on_both(replicas) == [second, second], pointer
    client.close()
    sent = {k for r in replicas.recorders for _, k in r.key_ids}
    assert sent == {first, second}  # the scorer never heard of the planted id
