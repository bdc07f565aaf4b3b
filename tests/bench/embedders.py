"""The gateway's embedders side by side in one run: speed per prompt and detection quality.

1. ms to embed a whole prompt (every window, fhe.chunk_tokens = 128 with 16 overlap), medians,
   for one sentence, 2 KB and 20 KB: MiniLM on one thread (the gateway's setting), MiniLM on
   two, and the static table distilled from it (gateway/fhe/static_embed.py).
2. Detection quality on tests/bench/paraphrases.yaml: per (text, topic), the max cosine to the
   topic's reference examples; positives are paraphrases of the topic, negatives unrelated
   texts and other topics' paraphrases. AUC, the score distributions, and the threshold that
   best separates them (with the true and false positive rates there); then the long-prompt
   case of tests/integration/test_fhe_scoring.py (deal talk after ~4 KB of baking).
3. The window size's trade (fhe.chunk_tokens, overlap an eighth): the long-prompt case's scores
   and the windows a 2 KB and a 20 KB prompt need (each one a query for the scorer).
4. With --distill: the time to distill the static table from the model (~30-40 s).

Run: .venv/bin/python tests/bench/embedders.py [--distill]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

ROOT = Path(__file__).parents[1].parent
sys.path.insert(0, str(ROOT))

from gateway.fhe.chunks import Windows  # noqa: E402
from gateway.fhe.embed import Embedder, TextEmbedder  # noqa: E402
from gateway.fhe.static_embed import StaticEmbedder, distill  # noqa: E402
from tests.bench.fhe_scoring import PROMPTS  # noqa: E402
from tests.integration.test_fhe_scoring import BREAD, DEAL, EXAMPLES  # noqa: E402
from tests.static_table import static_table_dir  # noqa: E402

WINDOWS = Windows(128 - 2, 16, 64)  # the gateway's defaults (fhe.chunk_tokens and overlap)
ROUNDS = {"one sentence": 200, "2 KB": 50, "20 KB": 10}


def speed(embedders: dict[str, TextEmbedder]) -> None:
    print("1. ms to embed every window of a prompt (medians)")
    print(f"{'prompt':>14} " + " ".join(f"{name:>16}" for name in embedders))
    for prompt, (text, _) in PROMPTS.items():
        cells = []
        for embedder in embedders.values():
            embedder.embed_windows(text, WINDOWS)  # warm
            runs = []
            for _ in range(5 if isinstance(embedder, Embedder) else ROUNDS[prompt]):
                started = time.perf_counter()
                embedder.embed_windows(text, WINDOWS)
                runs.append((time.perf_counter() - started) * 1000)
            cells.append(f"{statistics.median(runs):>16.3f}")
        print(f"{prompt:>14} " + " ".join(cells))


def auc(positives: npt.NDArray[np.float64], negatives: npt.NDArray[np.float64]) -> float:
    above = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(above + ties / 2)


def quality(embedders: dict[str, TextEmbedder]) -> None:
    data = yaml.safe_load((Path(__file__).parent / "paraphrases.yaml").read_text())
    topics = data["topics"]
    print("\n2. detection quality: max cosine to a topic's references "
          f"({sum(len(t['paraphrases']) for t in topics.values())} paraphrases, "
          f"{len(data['unrelated'])} unrelated texts, {len(topics)} topics)")
    print(f"{'embedder':>16} {'AUC':>6} {'pos min':>8} {'pos med':>8} {'neg med':>8} "
          f"{'neg max':>8} {'best t':>7} {'TPR':>5} {'FPR':>6} {'bread':>6} {'+deal':>6}")
    for name, embedder in embedders.items():
        refs = {t: np.array([embedder.embed(x) for x in v["references"]])
                for t, v in topics.items()}
        positives, negatives = [], []
        for topic, spec in topics.items():
            for text in spec["paraphrases"]:
                query = embedder.embed(text)
                for other in topics:
                    score = float((refs[other] @ query).max())
                    (positives if other == topic else negatives).append(score)
        for text in data["unrelated"]:
            query = embedder.embed(text)
            negatives.extend(float((refs[t] @ query).max()) for t in topics)
        pos, neg = np.array(positives), np.array(negatives)
        threshold, tpr, fpr = best_threshold(pos, neg)
        deals = np.array([embedder.embed(x) for x in EXAMPLES["labels"]["m-and-a"]])
        bread = float((embedder.embed_windows(BREAD * 20, WINDOWS) @ deals.T).max())
        deal = float((embedder.embed_windows(BREAD * 20 + DEAL, WINDOWS) @ deals.T).max())
        print(f"{name:>16} {auc(pos, neg):>6.3f} {pos.min():>8.2f} {np.median(pos):>8.2f} "
              f"{np.median(neg):>8.2f} {neg.max():>8.2f} {threshold:>7.2f} {tpr:>5.2f} "
              f"{fpr:>6.3f} {bread:>6.2f} {deal:>6.2f}")


def window_sizes(embedders: dict[str, TextEmbedder]) -> None:
    print("\n3. window size: long-prompt scores (baking / baking + deal) and windows per prompt")
    print(f"{'embedder':>16} {'tokens':>6} {'bread':>6} {'+deal':>6} {'2 KB':>5} {'20 KB':>6}")
    for name, embedder in embedders.items():
        deals = np.array([embedder.embed(x) for x in EXAMPLES["labels"]["m-and-a"]])
        for size in (64, 128, 256):
            windows = Windows(size - 2, size // 8, 1024)
            bread = float((embedder.embed_windows(BREAD * 20, windows) @ deals.T).max())
            deal = float((embedder.embed_windows(BREAD * 20 + DEAL, windows) @ deals.T).max())
            counts = [len(embedder.embed_windows(PROMPTS[p][0], windows))
                      for p in ("2 KB", "20 KB")]
            print(f"{name:>16} {size:>6} {bread:>6.2f} {deal:>6.2f} {counts[0]:>5} {counts[1]:>6}")


def best_threshold(pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64]
                   ) -> tuple[float, float, float]:
    """The cut maximizing TPR - FPR (Youden's J), and the rates there."""
    best = max(np.concatenate([pos, neg]),
               key=lambda t: float((pos >= t).mean() - (neg >= t).mean()))
    return float(best), float((pos >= best).mean()), float((neg >= best).mean())


def main() -> None:
    embedders: dict[str, TextEmbedder] = {
        "minilm 1 thread": Embedder(), "minilm 2 threads": Embedder(threads=2),
        "static": StaticEmbedder(static_table_dir())}
    speed(embedders)
    by_kind = {"minilm": embedders["minilm 1 thread"], "static": embedders["static"]}
    quality(by_kind)
    window_sizes(by_kind)
    if "--distill" in sys.argv:
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            distill(cache)
            print(f"\n4. distilling the static table: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
