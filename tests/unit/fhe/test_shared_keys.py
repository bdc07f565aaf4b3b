"""Key epochs in a real Redis: sealed as on disk, opened only with the master key, the pointer
authenticated; a replica never follows a planted or older pointer, and keeps its epoch while
Redis is away."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.errors import CustodyError, KeysUnavailable
from gateway.fhe.epochs import SharedEpochs
from gateway.fhe.keys import KEY_ID, KeyStore, new_key_id
from gateway.fhe.seal import to_bytes
from gateway.fhe.shared_keys import CURRENT, KEYS, RedisKeyStore
from gateway.observability.metrics import Metrics
from gateway.state.redis_store import connect
from tests.redis_server import RedisServer
from tests.unit.fhe.conftest import MASTER


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as running:
        yield running


@pytest.fixture
async def redis(server: RedisServer) -> AsyncIterator[Redis]:
    client = connect(server.url, 2.0)
    yield client
    await client.aclose()


@pytest.fixture
def shared(redis: Redis) -> RedisKeyStore:
    return RedisKeyStore(redis, MASTER, 2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_round_trip_and_nothing_in_clear(shared: RedisKeyStore, redis: Redis) -> None:
    first, imported = await shared.init()
    assert imported == 0
    assert KEY_ID.match(first)
    assert await shared.current_id() == first
    keys = await shared.load(first)
    stored = await redis.hget(KEYS, first)
    assert to_bytes(keys.secret)[64:192] not in base64.b64decode(stored)
    with pytest.raises(CustodyError, match="already exist"):
        await shared.init()
    second = await shared.rotate()
    assert second > first
    assert await shared.current_id() == second
    assert await shared.show() == [
        {"key_id": first, "current": "false", "created": first.split("-")[1]},
        {"key_id": second, "current": "true", "created": second.split("-")[1]}]
    assert (await shared.load(first)).key_id == first  # older epochs stay readable


async def test_wrong_master_key_opens_nothing_and_trusts_no_pointer(
        shared: RedisKeyStore, redis: Redis) -> None:
    key_id, _ = await shared.init()
    other = RedisKeyStore(redis, bytes(32), 2.0)
    with pytest.raises(CustodyError, match="does not open"):
        await other.load(key_id)
    pointer = await other.pointer()
    assert pointer.refused
    assert pointer.key_id is None
    assert await other.newest_id() is None


async def test_a_tampered_pointer_is_refused(shared: RedisKeyStore, redis: Redis) -> None:
    key_id, _ = await shared.init()
    newer = new_key_id(after=key_id)
    raw = await redis.get(CURRENT)
    for planted in (newer, f"{newer} {raw.split()[1]}", f"{key_id} {'0' * 64}", "x" * 10_000):
        await redis.set(CURRENT, planted)
        pointer = await shared.pointer()
        assert pointer.refused, planted
        assert pointer.key_id is None
    # a replica starting now takes the newest epoch that opens, whatever the pointer says
    assert await shared.newest_id() == key_id


async def test_a_replayed_older_pointer_is_ignored(shared: RedisKeyStore, redis: Redis) -> None:
    first, _ = await shared.init()
    old_pointer = await redis.get(CURRENT)
    second = await shared.rotate()
    clock, metrics = Clock(), Metrics()
    epochs = SharedEpochs(shared, metrics, clock=clock)
    await epochs.start()
    assert (await epochs.current()).key_id == second
    await redis.set(CURRENT, old_pointer)  # genuine, and older: a replay
    clock.now += 5
    assert (await epochs.current()).key_id == second
    assert await shared.newest_id() == second  # nor does a replica starting now follow it
    fresh = SharedEpochs(shared, metrics, clock=clock)
    await fresh.start()
    assert (await fresh.current()).key_id == second
    assert first < second


async def test_a_rotation_is_picked_up_at_the_next_check(shared: RedisKeyStore) -> None:
    first, _ = await shared.init()
    clock = Clock()
    epochs = SharedEpochs(shared, Metrics(), clock=clock)
    await epochs.start()
    held = await epochs.current()
    second = await shared.rotate()
    clock.now += 0.5
    assert await epochs.current() is held  # checked at most once a second
    clock.now += 0.6
    assert (await epochs.current()).key_id == second
    assert held.key_id == first  # what a request in flight holds stays usable


async def test_a_missing_epoch_is_refused(shared: RedisKeyStore, redis: Redis) -> None:
    key_id, _ = await shared.init()
    with pytest.raises(CustodyError, match="no FHE key"):
        await shared.load(new_key_id(after=key_id))
    clock = Clock()
    epochs = SharedEpochs(shared, Metrics(), clock=clock)
    await epochs.start()
    newer = await shared.rotate()
    await redis.hdel(KEYS, newer)  # the pointer names an epoch no longer there
    clock.now += 2
    assert (await epochs.current()).key_id == key_id  # kept, not broken
    await redis.delete(KEYS, CURRENT)
    with pytest.raises(CustodyError, match="run `veil keys init`"):
        await SharedEpochs(shared, Metrics()).start()


async def test_planted_epochs_do_not_open_and_do_not_skew_rotation(
        shared: RedisKeyStore, redis: Redis) -> None:
    key_id, _ = await shared.init()
    future = "fhe-29991231T235959Z-00000000"
    await redis.hset(KEYS, future, base64.b64encode(b"\0" * 100).decode())
    await redis.hset(KEYS, "not-a-key-id", "x")
    assert await shared.newest_id() == key_id
    rotated = await shared.rotate()
    assert rotated < future  # stamped after the newest genuine epoch, not after the planted one
    with pytest.raises(CustodyError, match="does not open"):
        await shared.load(future)
    await redis.hset(KEYS, future, "x" * (2 * 1024 * 1024))
    with pytest.raises(CustodyError, match="not one a gateway wrote"):
        await shared.load(future)


async def test_two_rotations_at_once_one_wins(shared: RedisKeyStore, redis: Redis) -> None:
    """Another operator rotates between this rotation's read and its write: this one is
    refused (nothing written), so no replica can be left on a second "newest" epoch."""
    await shared.init()
    other: list[str] = []

    class Racing(RedisKeyStore):
        async def newest_id(self) -> str | None:
            if not other:
                other.append(await shared.rotate())
            return await super().newest_id()

    with pytest.raises(CustodyError, match="run it again"):
        await Racing(redis, MASTER, 2.0).rotate()
    assert await shared.current_id() == other[0]
    assert len(await shared.ids()) == 2
    assert await Racing(redis, MASTER, 2.0).rotate() > other[0]  # run again: it goes through


async def test_rotations_in_one_second_still_sort_in_order(shared: RedisKeyStore) -> None:
    made = [(await shared.init())[0]] + [await shared.rotate() for _ in range(3)]
    assert made == sorted(made)
    assert len(set(made)) == 4
    assert await shared.current_id() == made[-1]


async def test_init_imports_a_keys_dir(shared: RedisKeyStore, tmp_path: Path) -> None:
    local = KeyStore(tmp_path / "keys", MASTER)
    first = local.init()
    second = local.rotate()
    current, imported = await shared.init(import_from=local)
    assert (current, imported) == (second, 2)
    assert [e["key_id"] for e in await shared.show()] == [first, second]
    assert to_bytes((await shared.load(first)).secret) == to_bytes(local.load(first).secret)


async def test_import_with_another_master_key_writes_nothing(
        shared: RedisKeyStore, tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys", bytes(32)).init()
    with pytest.raises(CustodyError, match="does not open"):
        await shared.init(import_from=KeyStore(tmp_path / "keys", MASTER))
    assert await shared.ids() == []


async def test_redis_down_keeps_the_epoch_held(shared: RedisKeyStore,
                                               server: RedisServer) -> None:
    key_id, _ = await shared.init()
    clock, metrics = Clock(), Metrics()
    epochs = SharedEpochs(shared, metrics, clock=clock)
    await epochs.start()
    server.stop()
    clock.now += 2
    assert (await epochs.current()).key_id == key_id
    assert 'veil_state_failures_total{concern="fhe_keys"} 1.0' in metrics.render().decode()
    with pytest.raises(KeysUnavailable):
        await SharedEpochs(shared, metrics).start()  # at start: nothing to keep, refused


async def test_key_ids_come_after_the_current_one() -> None:
    ahead = "fhe-29990101T000000Z-0123abcd"
    assert new_key_id(after=ahead).startswith("fhe-29990101T000001Z-")
    assert new_key_id(after="fhe-20000101T000000Z-0123abcd") > "fhe-2024"


def redis_config(tmp_path: Path, redis_url: str) -> Path:
    (tmp_path / "master.key").write_text(MASTER.hex())
    (tmp_path / "policy.yaml").write_text("version: 1\nname: p\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
fhe:
  keys_in: redis
  keys_dir: "{tmp_path / 'keys'}"
  master_key_file: "{tmp_path / 'master.key'}"
  scorers: [{{name: s, url: "http://127.0.0.1:9"}}]
state: {{redis_url: "{redis_url}"}}
policies: {{files: ["{tmp_path / 'policy.yaml'}"]}}
backends: []
models: {{}}
""")
    return config


def test_veil_keys_and_preflight_on_redis(server: RedisServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`veil keys` with keys_in: redis: init imports keys_dir, rotate and show act on Redis;
    `veil serve`'s preflight refuses without an epoch there, or without Redis."""
    from gateway.cli import main  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.preflight import preflight  # noqa: PLC0415
    from gateway.settings import load_settings  # noqa: PLC0415

    config = redis_config(tmp_path, server.url)
    settings = load_settings(config, {})
    with pytest.raises(ConfigError, match=r"fhe: no FHE key in Redis .*run `veil keys init`"):
        preflight(config, settings, {})
    on_disk = KeyStore(tmp_path / "keys", MASTER).init()
    assert main(["keys", "init", "--config", str(config)]) == 0
    assert f"imported 1 epochs from {tmp_path / 'keys'} into Redis; {on_disk} is current" \
        in capsys.readouterr().out
    assert main(["keys", "init", "--config", str(config)]) == 1  # never overwrites
    assert preflight(config, settings, {}).policies
    assert main(["keys", "rotate", "--config", str(config)]) == 0
    rotated = capsys.readouterr().out.split()[1]
    assert main(["keys", "show", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{on_disk}  current=false",
                                                   f"{rotated}  current=true"]
    assert KeyStore(tmp_path / "keys", MASTER).current_id() == on_disk  # keys_dir untouched
    server.stop()
    with pytest.raises(ConfigError, match=r"fhe: the shared store .* did not answer"):
        preflight(config, settings, {})
    assert main(["keys", "rotate", "--config", str(config)]) == 1


def test_keys_in_redis_needs_a_redis_url(tmp_path: Path) -> None:
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.settings import load_settings  # noqa: PLC0415

    config = redis_config(tmp_path, "redis://127.0.0.1:9/0")
    config.write_text(config.read_text().replace('state: {redis_url: "redis://127.0.0.1:9/0"}',
                                                 ""))
    with pytest.raises(ConfigError, match=r"fhe\.keys_in: redis needs state\.redis_url"):
        load_settings(config, {})
