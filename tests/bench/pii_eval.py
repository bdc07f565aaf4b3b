"""Detection quality on ../shared/pii-eval/synth_dataset_v2.json (1,500 labelled texts), Veil
beside Presidio's default configuration, measured in the same run.

Matching rule: overlap. A prediction is a true positive if it overlaps a gold span of the same
(mapped) type; a gold span is found if any prediction of its type overlaps it. Gold types with
no counterpart here (DATE_TIME, TITLE, ...) are not scored, but predictions overlapping them
are not counted as false positives either (a city inside a street address is not a mistake).
Presidio runs with its default recognizers, the same spaCy model, threshold 0.3.

What the model would see is scored too: a value is *kept* when none of its words is left
outside every prediction (of any type: a masked word is hidden whatever it is called), and
over-masking is the share of words outside every gold span that a prediction covers.

Run: .venv/bin/python tests/bench/pii_eval.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from gateway.policy.schema import Policy
from gateway.privacy.gazetteer import GazetteerDetector
from gateway.privacy.masker import Masker
from gateway.privacy.normalize import reading
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.presidio import PresidioDetector, model_path
from gateway.privacy.spans import Detector
from gateway.protect import masking_rules

DATASET = Path(__file__).parents[3] / "shared/pii-eval/synth_dataset_v2.json"
GOLD_MAP = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD",
            "IBAN_CODE": "IBAN", "US_SSN": "US_SSN", "IP_ADDRESS": "IP_ADDRESS",
            "PERSON": "PERSON", "GPE": "LOCATION", "LOCATION": "LOCATION",
            "ORGANIZATION": "ORGANIZATION", "STREET_ADDRESS": "ADDRESS"}
PRESIDIO_MAP = {**GOLD_MAP, "NRP": None}
TYPES = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "PERSON", "LOCATION",
         "ORGANIZATION", "ADDRESS"]
WORDS = re.compile(r"\w+")

Spans = list[tuple[int, int, str]]


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(gold: list[Spans], unscored: list[list[tuple[int, int]]],
          predicted: list[Spans]) -> dict[str, tuple[float, float, float, int]]:
    tp_pred, n_pred, tp_gold, n_gold = Counter(), Counter(), Counter(), Counter()
    for g, ignore, p in zip(gold, unscored, predicted, strict=True):
        for start, end, kind in p:
            same = [x for x in g if x[2] == kind and overlaps((start, end), x[:2])]
            if same:
                tp_pred[kind] += 1
                n_pred[kind] += 1
            elif not any(overlaps((start, end), u) for u in ignore):
                n_pred[kind] += 1
        for start, end, kind in g:
            n_gold[kind] += 1
            if any(k == kind and overlaps((start, end), (s, e)) for s, e, k in p):
                tp_gold[kind] += 1
    out = {}
    for kind in TYPES:
        precision = tp_pred[kind] / n_pred[kind] if n_pred[kind] else 1.0
        recall = tp_gold[kind] / n_gold[kind] if n_gold[kind] else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[kind] = (precision, recall, f1, n_gold[kind])
    return out


def leaks(texts: list[str], gold: list[Spans], everything: list[list[tuple[int, int]]],
          predicted: list[Spans]) -> tuple[dict[str, float], float]:
    """Per type, the share of values none of whose words reaches the model; and the share of
    words outside every gold span that are masked."""
    kept, total = Counter(), Counter()
    masked_plain = plain = 0
    for text, g, pii, p in zip(texts, gold, everything, predicted, strict=True):
        covered = bytearray(len(text))
        for start, end, _ in p:
            covered[start:end] = b"\x01" * (end - start)
        for start, end, kind in g:
            total[kind] += 1
            words = list(WORDS.finditer(text, start, end))
            kept[kind] += all(covered.find(0, w.start(), w.end()) == -1 for w in words)
        for w in WORDS.finditer(text):
            if not any(overlaps(w.span(), x) for x in pii):
                plain += 1
                masked_plain += covered.find(1, w.start(), w.end()) != -1
    return ({k: kept[k] / total[k] if total[k] else 1.0 for k in TYPES},
            masked_plain / plain if plain else 0.0)


def veil_predict(texts: list[str], gazetteer: bool = False) -> tuple[list[Spans], float]:
    detectors: list[Detector] = [PatternDetector(), PresidioDetector()]
    if gazetteer:
        detectors.append(GazetteerDetector())
    masker = Masker(masking_rules(Policy(version=1, name="eval")))
    detectors[1].detect("warm up")
    started = time.perf_counter()
    out = []
    for text in texts:
        read = reading(text)  # as the engine does: detect on the reading form, map back
        spans = [read.original(s) for d in detectors for s in d.detect(read.text)]
        found = masker.findings(text, spans)
        out.append([(s.start, s.end, s.entity) for s in found])
    return out, time.perf_counter() - started


def presidio_predict(texts: list[str]) -> tuple[list[Spans], float]:
    from presidio_analyzer import AnalyzerEngine  # noqa: PLC0415
    from presidio_analyzer.nlp_engine import NlpEngineProvider  # noqa: PLC0415

    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": str(model_path())}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine())
    analyzer.analyze(text="warm up", language="en")
    started = time.perf_counter()
    out = []
    for text in texts:
        results = analyzer.analyze(text=text, language="en", score_threshold=0.3)
        out.append([(r.start, r.end, PRESIDIO_MAP[r.entity_type]) for r in results
                    if PRESIDIO_MAP.get(r.entity_type)])
    return out, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    records = json.loads(DATASET.read_text())
    if args.limit:
        records = records[:args.limit]
    texts = [r["full_text"] for r in records]
    gold = [[(s["start_position"], s["end_position"], GOLD_MAP[s["entity_type"]])
             for s in r["spans"] if s["entity_type"] in GOLD_MAP] for r in records]
    unscored = [[(s["start_position"], s["end_position"]) for s in r["spans"]
                 if s["entity_type"] not in GOLD_MAP] for r in records]
    # Veil as the default policy runs it (with the gazetteer), and without it (the ablation)
    veil, veil_s = veil_predict(texts, gazetteer=True)
    no_gazetteer, _ = veil_predict(texts)
    presidio, presidio_s = presidio_predict(texts)
    a, b = score(gold, unscored, veil), score(gold, unscored, presidio)
    everything = [[(x["start_position"], x["end_position"]) for x in r["spans"]]
                  for r in records]
    (veil_kept, veil_over), (presidio_kept, presidio_over) = (
        leaks(texts, gold, everything, veil), leaks(texts, gold, everything, presidio))
    plain_kept, plain_over = leaks(texts, gold, everything, no_gazetteer)
    print(f"\n{len(texts)} texts, overlap matching; time per text: veil "
          f"{veil_s / len(texts) * 1e3:.2f} ms, presidio {presidio_s / len(texts) * 1e3:.2f} ms "
          f"(ratio {veil_s / presidio_s:.2f})\n")
    print(f"{'entity':<13}{'gold':>5}  {'veil P':>7}{'R':>7}{'F1':>7}{'kept':>7}"
          f"{'no gaz':>8}   {'presidio P':>10}{'R':>7}{'F1':>7}{'kept':>7}")
    for kind in TYPES:
        p, r, f, n = a[kind]
        pp, pr, pf, _ = b[kind]
        print(f"{kind:<13}{n:>5}  {p:>7.3f}{r:>7.3f}{f:>7.3f}{veil_kept[kind]:>7.3f}"
              f"{plain_kept[kind]:>8.3f}   "
              f"{pp:>10.3f}{pr:>7.3f}{pf:>7.3f}{presidio_kept[kind]:>7.3f}")
    print(f"\nover-masking (words outside every gold span that were masked): veil "
          f"{veil_over:.1%}, veil without the gazetteer {plain_over:.1%}, presidio "
          f"{presidio_over:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
