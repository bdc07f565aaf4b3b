"""Detection latency per prompt of 200 B, 2 KB and 20 KB, beside Presidio in the same run.

    patterns           Veil's pattern tier (all pattern entities + cue names)
    presidio-patterns  Presidio's own pattern recognizers (default registry, no NLP artifacts)
    veil-full          Veil's pattern tier + spaCy NER (ner component only) via Presidio
    presidio-full      Presidio's default AnalyzerEngine with the same spaCy model

Prompts are built from the labelled eval texts (realistic PII density). Medians over repeats.
Run: .venv/bin/python tests/bench/detection_latency.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngineProvider

from gateway.privacy.patterns import PatternDetector
from gateway.privacy.presidio import PresidioDetector, model_path

DATASET = Path(__file__).parents[3] / "shared/pii-eval/synth_dataset_v2.json"
SIZES = {"200 B": 200, "2 KB": 2048, "20 KB": 20480}


def prompt(size: int, texts: list[str]) -> str:
    out, i = "", 0
    while len(out) < size:
        out += texts[i % len(texts)] + "\n"
        i += 1
    return out[:size]


def median_ms(fn: Callable[[str], object], text: str, budget_s: float = 3.0) -> float:
    fn(text)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        fn(text)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    texts = [r["full_text"] for r in json.loads(DATASET.read_text())]
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": str(model_path())}]})
    presidio = AnalyzerEngine(nlp_engine=provider.create_engine())
    pattern_recognizers = [r for r in presidio.registry.recognizers
                           if type(r).__name__ != "SpacyRecognizer"]
    empty = NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=None,
                         language="en")

    def presidio_patterns(text: str) -> object:
        return [r.analyze(text, r.supported_entities, empty) for r in pattern_recognizers]

    patterns, ner = PatternDetector(), PresidioDetector()
    targets: dict[str, Callable[[str], object]] = {
        "patterns": patterns.detect,
        "presidio-patterns": presidio_patterns,
        "veil-full": lambda t: (patterns.detect(t), ner.detect(t)),
        "presidio-full": lambda t: presidio.analyze(text=t, language="en"),
    }
    print(f"\nmedian ms per prompt ({len(pattern_recognizers)} Presidio pattern recognizers)\n")
    print(f"{'size':>6}  " + "".join(f"{n:>18}" for n in targets)
          + f"{'patterns speed-up':>19}{'full ratio':>12}")
    for label, size in SIZES.items():
        text = prompt(size, texts)
        ms = {name: median_ms(fn, text) for name, fn in targets.items()}
        speedup = ms["presidio-patterns"] / ms["patterns"]
        ratio = ms["veil-full"] / ms["presidio-full"]
        print(f"{label:>6}  " + "".join(f"{ms[n]:>18.3f}" for n in targets)
              + f"{speedup:>18.1f}x{ratio:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
