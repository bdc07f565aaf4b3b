"""Hot reload: a valid edit replaces the set, a broken one changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from gateway.observability.metrics import Metrics
from gateway.plugins import plugin_entities
from gateway.policy.active import PolicySet, load_policy_set
from gateway.policy.reload import PolicyHolder
from gateway.settings import PolicySettings


def write(path: Path, **fields: object) -> None:
    path.write_text(yaml.safe_dump({"version": 1, "name": "p",
                                    "detectors": {"builtin": ["patterns"]}, **fields}))


def reloads(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("veil_policy_reloads_total", {"result": result})
    return value or 0.0


async def as_is(policies: PolicySet) -> PolicySet:
    """The policy layer's holder on its own: the set is what requests use."""
    return policies


async def started(settings: PolicySettings, metrics: Metrics) -> PolicyHolder[PolicySet]:
    def load() -> PolicySet:
        return load_policy_set(settings, plugin_entities=plugin_entities)

    holder = PolicyHolder(settings, load, as_is, metrics)
    await holder.start()
    return holder


async def holder_for(path: Path, interval: float = 0
                     ) -> tuple[PolicyHolder[PolicySet], Metrics]:
    metrics = Metrics()
    settings = PolicySettings(files=[str(path)], watch_interval_s=interval)
    return await started(settings, metrics), metrics


async def test_valid_edit_replaces_and_broken_edit_keeps(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path)
    holder, metrics = await holder_for(path)
    first = holder.current
    write(path, actions={"EMAIL": "redact"})
    assert await holder.reload("test")
    second = holder.current
    assert second is not first
    assert second.policies[0].digest != first.policies[0].digest
    assert reloads(metrics, "ok") == 1
    path.write_text("version: 1\nname: p\nactions: {EMIAL: redact}\n")
    assert not await holder.reload("test")
    assert holder.current is second  # nothing changed
    assert reloads(metrics, "error") == 1
    active = metrics.registry.get_sample_value(
        "veil_policy_active", {"policy": "p", "digest": second.policies[0].digest})
    assert active == 1
    replaced = metrics.registry.get_sample_value(
        "veil_policy_active", {"policy": "p", "digest": first.policies[0].digest})
    assert replaced == 0


async def test_unknown_plugin_on_reload_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path)
    holder, _ = await holder_for(path)
    before = holder.current
    write(path, detectors={"builtin": ["patterns"], "plugins": ["no_such_plugin"]})
    assert not await holder.reload("test")
    assert holder.current is before


async def test_watcher_picks_up_a_change(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path)
    holder, metrics = await holder_for(path, interval=0.05)
    before = holder.current
    watcher = asyncio.create_task(holder.watch())
    try:
        write(path, default_action="redact")
        for _ in range(100):
            if holder.current is not before:
                break
            await asyncio.sleep(0.02)
        assert holder.current.policies[0].policy.default_action == "redact"
        assert reloads(metrics, "ok") == 1
    finally:
        watcher.cancel()


async def test_signed_policies_reload_only_when_the_new_file_verifies(tmp_path: Path) -> None:
    from gateway.policy.signing import generate, sign  # noqa: PLC0415

    private, public = tmp_path / "k", tmp_path / "k.pub"
    generate(private, public)
    path = tmp_path / "p.yaml"
    write(path)
    sign(path, private)
    settings = PolicySettings(files=[str(path)], require_signed_policies=True,
                              public_key_file=str(public), watch_interval_s=0)
    holder = await started(settings, Metrics())
    before = holder.current
    write(path, default_action="allow")  # edited, not re-signed: a weakening nobody approved
    assert not await holder.reload("test")
    assert holder.current is before
    sign(path, private)
    assert await holder.reload("test")
    assert holder.current.policies[0].policy.default_action == "allow"
