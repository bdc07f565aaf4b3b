"""The static embedder distilled from MiniLM: the same vector every time, unit length, one row
per window of the text; a table that is damaged, edited, from another model or missing is
refused; a scorer model built with another embedder is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import EmbeddingModelError, ScorerError, TooManyChunks
from gateway.fhe.chunks import Windows
from gateway.fhe.client import ModelInfo
from gateway.fhe.embed import TextWindows
from gateway.fhe.scoring import ModelFile, load_model, save_model
from gateway.fhe.static_embed import NAME, StaticEmbedder, table_path
from tests.static_table import static_table_dir

DEAL = "Draft the term sheet for our acquisition of Globex Corporation"


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder(static_table_dir(), build_missing=False)


def test_the_same_text_gives_the_same_unit_vector(embedder: StaticEmbedder) -> None:
    again = StaticEmbedder(static_table_dir(), build_missing=False)
    text = "Summarize the quarterly report for the board meeting. " * 30
    windows = Windows(126, 16, 64)
    assert np.array_equal(embedder.embed(DEAL), again.embed(DEAL))
    assert np.array_equal(embedder.embed_windows(text, windows),
                          again.embed_windows(text, windows))
    rows = embedder.embed_windows(text, windows)
    assert rows.shape == (len(TextWindows(windows).cut(text)), 384)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1)
    for blank in ("", "   "):
        assert np.isclose(np.linalg.norm(embedder.embed(blank)), 1)
        assert embedder.embed_windows(blank, windows).shape == (1, 384)


def test_each_row_is_its_window_embedded_alone(embedder: StaticEmbedder) -> None:
    windows = Windows(16, 4, 64)
    text = " ".join(["the quick brown fox jumps over a lazy dog", "rain falls on the city"] * 8)
    rows = embedder.embed_windows(text, windows)
    pieces = TextWindows(windows).cut(text)
    assert len(pieces) == len(rows) > 1
    for piece, row in zip(pieces, rows, strict=True):
        assert float(embedder.embed(piece) @ row) > 0.999
    assert float(embedder.embed_windows("short", windows)[0] @ embedder.embed("short")) \
        > 0.9999
    with pytest.raises(TooManyChunks):
        embedder.embed_windows(text, Windows(16, 4, 2))


def test_its_token_ids_are_the_tokenizers(embedder: StaticEmbedder) -> None:
    """Ids come from the tokenizer's fast path (no offsets): the same ids as `encode`."""
    from gateway.fhe.embed import load_tokenizer  # noqa: PLC0415

    tokenizer = load_tokenizer()
    for text in ("", "Ünïcödé naïve café 東京 🙂 x\u200by", DEAL * 40, "a\n\nb\tc  d"):
        assert embedder._ids(text) == tokenizer.encode(
            text, add_special_tokens=False).ids


def test_related_text_scores_above_unrelated(embedder: StaticEmbedder) -> None:
    reference = embedder.embed(DEAL)
    related = embedder.embed("Prepare the key terms for buying out Globex")
    unrelated = embedder.embed("What is a good recipe for sourdough bread?")
    assert float(reference @ related) > float(reference @ unrelated) + 0.3


def tampered(tmp_path: Path, **changes: object) -> Path:
    """A copy of the suite's table with some of its arrays replaced."""
    source = table_path(static_table_dir())
    with np.load(source, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update(changes)  # type: ignore[arg-type]
    target = table_path(tmp_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **arrays)  # type: ignore[arg-type]
    return tmp_path


def rows_of_the_suite() -> np.ndarray:  # type: ignore[type-arg]
    with np.load(table_path(static_table_dir()), allow_pickle=False) as data:
        return np.array(data["rows"])


def test_a_damaged_table_is_refused(tmp_path: Path) -> None:
    rows = rows_of_the_suite()
    rows[12345, 7] += 0.5
    with pytest.raises(EmbeddingModelError, match="does not hash to the digest"):
        StaticEmbedder(tampered(tmp_path, rows=rows), build_missing=False)


def test_an_edited_table_with_its_digest_rewritten_is_refused(tmp_path: Path) -> None:
    """Every row moved (another model's table, or a crafted one): sampled rows disagree."""
    import hashlib  # noqa: PLC0415

    rows = rows_of_the_suite() * np.float32(0.9)
    digest = hashlib.sha256(np.ascontiguousarray(rows, dtype="<f4").tobytes()).hexdigest()
    with pytest.raises(EmbeddingModelError, match="disagrees with the pinned model"):
        StaticEmbedder(tampered(tmp_path, rows=rows, rows_sha256=np.array(digest)),
                       build_missing=False)


def test_a_table_of_another_model_or_recipe_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="another model or recipe"):
        StaticEmbedder(tampered(tmp_path / "a", model_sha256=np.array("0" * 64)),
                       build_missing=False)
    with pytest.raises(EmbeddingModelError, match="another model or recipe"):
        StaticEmbedder(tampered(tmp_path / "b", recipe=np.array("something else")),
                       build_missing=False)


def test_a_missing_or_foreign_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="veil scorer distill"):
        StaticEmbedder(tmp_path, build_missing=False)
    table_path(tmp_path).write_bytes(b"not a table")
    with pytest.raises(EmbeddingModelError, match="is not a static embedding table"):
        StaticEmbedder(tmp_path, build_missing=False)


def test_a_cache_it_cannot_write_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a file where the folder should be
    with pytest.raises(EmbeddingModelError, match="cannot write the static embedding table"):
        StaticEmbedder(tmp_path / "file" / "cache")


def test_model_files_record_their_embedder(tmp_path: Path) -> None:
    weights = np.eye(3, 384)
    save_model(tmp_path / "m.npz", ModelFile("m", "reference_set", weights, ("a", "b", "c"),
                                             None, "max", NAME))
    model = load_model(tmp_path / "m.npz")
    assert model.embedder == NAME
    assert model.describe()["embedder"] == NAME
    np.savez(tmp_path / "old.npz", kind=np.array("reference_set"),  # type: ignore[arg-type]
             weights=weights.astype(np.float32), labels=np.array(["a", "b", "c"]))
    assert load_model(tmp_path / "old.npz").embedder == "minilm"  # before there was a choice


class OneModelClient:
    name = "vendor"

    def __init__(self, embedder: str) -> None:
        self._info = ModelInfo("topics", "reference_set", 1, ("x",), "max", (1,), (), embedder)

    async def models(self) -> dict[str, ModelInfo]:
        return {"topics": self._info}


def test_a_scorer_model_of_another_embedder_is_refused(embedder: StaticEmbedder) -> None:
    from gateway.fhe.semantic import SemanticScorer  # noqa: PLC0415
    from gateway.observability.metrics import Metrics  # noqa: PLC0415
    from gateway.settings import FheSettings  # noqa: PLC0415

    scorer = SemanticScorer(FheSettings(), Metrics())
    scorer._embedder = embedder
    asyncio.run(scorer._check_embedder(OneModelClient(NAME), "topics"))  # type: ignore[arg-type]
    with pytest.raises(ScorerError, match=f"built with embedder minilm, this gateway embeds "
                                          f"with {NAME}"):
        asyncio.run(scorer._check_embedder(
            OneModelClient("minilm"), "topics"))  # type: ignore[arg-type]


def test_a_gateway_with_a_tampered_table_refuses_to_start(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.fhe.keys import KeyStore  # noqa: PLC0415
    from gateway.fhe.semantic import SemanticScorer  # noqa: PLC0415
    from gateway.observability.metrics import Metrics  # noqa: PLC0415
    from gateway.settings import FheSettings  # noqa: PLC0415

    monkeypatch.setenv("VEIL_TEST_FHE_MASTER", "11" * 32)
    KeyStore.open(str(tmp_path / "keys"), "VEIL_TEST_FHE_MASTER", None).init()
    rows = rows_of_the_suite()
    rows[100] = 0
    cache = tampered(tmp_path / "cache", rows=rows)
    settings = FheSettings(keys_dir=str(tmp_path / "keys"), master_key_env="VEIL_TEST_FHE_MASTER",
                           scorers=[{"name": "vendor", "url": "http://127.0.0.1:9"}],  # type: ignore[list-item]
                           embedder="static", embedder_cache_dir=str(cache))
    scorer = SemanticScorer(settings, Metrics())
    with pytest.raises(EmbeddingModelError, match="does not hash"):
        asyncio.run(scorer.start())
