"""Evaluation keys on the scorer: an epoch unused for the grace period is dropped, one in use
is kept, and files found at start get a full grace from then."""

from __future__ import annotations

from pathlib import Path

from gateway.fhe.key_grace import KeyGrace


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unused_epochs_are_dropped_and_used_ones_kept(tmp_path: Path) -> None:
    (tmp_path / "fhe-old.galois").write_bytes(b"k")
    clock = Clock()
    grace = KeyGrace(tmp_path, 10, clock)
    clock.now += 6
    (tmp_path / "fhe-new.galois").write_bytes(b"k")
    grace.used("fhe-new")
    assert grace.prune() == []  # the old one found at start: a full grace from then
    clock.now += 5
    assert grace.prune() == ["fhe-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fhe-new.galois"]
    clock.now += 9
    grace.used("fhe-new")
    clock.now += 9
    assert grace.prune() == []
    clock.now += 2
    assert grace.prune() == ["fhe-new"]
    assert list(tmp_path.iterdir()) == []
    grace.used("fhe-new")  # re-sent: tracked again, and a file already gone is no error
    clock.now += 11
    assert grace.prune() == ["fhe-new"]


def test_pruning_runs_often_enough_for_the_grace() -> None:
    assert KeyGrace(Path("/nonexistent"), 2).interval_s == 0.5
    assert KeyGrace(Path("/nonexistent"), 86_400).interval_s == 60
