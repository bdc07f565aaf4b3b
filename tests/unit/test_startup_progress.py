"""What takes seconds at `veil serve` start (spaCy in the NER workers, the embedding model) says
so before and after, with the time it took: a silent start looks hung."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.fhe.keys import KeyStore
from gateway.fhe.semantic import SemanticScorer
from gateway.observability.metrics import Metrics
from gateway.privacy.ner_pool import NerPool
from gateway.settings import FheSettings
from tests.static_table import static_table_dir


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def around(lines: list[dict[str, object]], before: str, after: str) -> dict[str, object]:
    names = [line["event"] for line in lines]
    assert before in names
    assert after in names
    assert names.index(before) < names.index(after)
    done = lines[names.index(after)]
    assert isinstance(done["seconds"], float)
    assert done["seconds"] > 0
    return done


async def test_ner_start_is_logged_with_its_duration(capsys: pytest.CaptureFixture[str]) -> None:
    pool = NerPool(1)
    try:
        await pool.start()
    finally:
        await pool.close()
    lines = events(capsys.readouterr().err)
    assert around(lines, "ner_loading", "ner_loaded")["workers"] == 1
    loading = next(line for line in lines if line["event"] == "ner_loading")
    assert loading["workers"] == 1


async def test_embedding_model_load_is_logged_with_its_duration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VEIL_TEST_FHE_MASTER", "11" * 32)
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    settings = FheSettings(keys_dir=str(tmp_path / "keys"), master_key_env="VEIL_TEST_FHE_MASTER",
                           scorers=[{"name": "vendor", "url": "http://127.0.0.1:9"}],  # type: ignore[list-item]
                           embedder="static", embedder_cache_dir=static_table_dir())
    scorer = SemanticScorer(settings, Metrics())
    try:
        await scorer.start()
    finally:
        await scorer.close()
    loaded = around(events(capsys.readouterr().err), "embedding_model_loading",
                    "embedding_model_loaded")
    assert loaded["embedder"] == "static"
