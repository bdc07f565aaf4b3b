"""What reaches the model, measured through the running gateway: labelled prompts are sent to
`veil serve` (the default policy's detectors) in front of the demo model server, and what the
model received is read back from the demo server. Beside it, in the same run, stock Presidio
(every predefined recognizer, the same spaCy model, threshold 0.3) masks the same prompts.

    kept          per type, the share of values none of whose words (two characters or more)
                  reached the model at any occurrence of the value (what the model received
                  is aligned with the prompt, character by character)
    over-masking  the share of the prompt's other words that did not reach the model

Data: tests/bench/data/work_prompts.json, realistic work prompts (support tickets, HR letters,
CRM exports, configs with credentials, medical notes, multilingual mail, chat logs) written for
this benchmark, independently of the detectors, with every personal value labelled; and, with
--shared, ../shared/pii-eval/synth_dataset_v2.json.
Run: .venv/bin/python tests/bench/leak_eval.py [--shared] [--limit N]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import signal
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

from detection_throughput import AUTH, config, wait_ready
from proxy_overhead import ROOT, free_port, start

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

WORK_PROMPTS = Path(__file__).parent / "data/work_prompts.json"
SHARED = ROOT.parent / "shared/pii-eval/synth_dataset_v2.json"
SHARED_TYPES = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "GPE": "LOCATION",
                "STREET_ADDRESS": "ADDRESS", "IBAN_CODE": "IBAN", "US_DRIVER_LICENSE":
                "DRIVING_LICENCE"}
WORDS = re.compile(r"\w{2,}")
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>|\[REDACTED:[A-Z0-9_]+\]|\[[A-Z0-9_]+:[0-9a-f]+\]")

Record = tuple[str, list[tuple[str, str]]]  # text, [(type, value)]


def work_prompts() -> list[Record]:
    return [(r["text"], [(v["type"], v["value"]) for v in r["values"]])
            for r in json.loads(WORK_PROMPTS.read_text())]


def shared() -> list[Record]:
    return [(r["full_text"], [(SHARED_TYPES.get(s["entity_type"], s["entity_type"]),
                               s["entity_value"]) for s in r["spans"]])
            for r in json.loads(SHARED.read_text())]


def through_gateway(url: str, demo: str, text: str) -> str:
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": text}]})
    request = urllib.request.Request(url + "/v1/chat/completions", data=body.encode(),
                                     headers=AUTH)
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    with urllib.request.urlopen(demo + "/_demo/last", timeout=10) as response:
        sent = json.loads(response.read())
    return str(sent["messages"][0]["content"])


def presidio_masker() -> object:
    from presidio_analyzer import AnalyzerEngine  # noqa: PLC0415
    from presidio_analyzer.nlp_engine import NlpEngineProvider  # noqa: PLC0415

    from gateway.privacy.presidio import model_path  # noqa: PLC0415

    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": str(model_path())}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine())

    def mask(text: str) -> str:
        results = analyzer.analyze(text=text, language="en", score_threshold=0.3)
        covered = bytearray(len(text))
        for r in results:
            covered[r.start:r.end] = b"\x01" * (r.end - r.start)
        return "".join(" " if covered[i] else ch for i, ch in enumerate(text))
    return mask


def survived(text: str, seen: str) -> bytearray:
    """Which characters of `text` reached the model in place: the received text aligned with
    the prompt (placeholders and masks replace spans; everything else is copied)."""
    kept = bytearray(len(text))
    seen = PLACEHOLDER.sub("\uffff", seen)  # a placeholder's letters are not the prompt's
    matcher = difflib.SequenceMatcher(None, text, seen, autojunk=False)
    for block in matcher.get_matching_blocks():
        kept[block.a:block.a + block.size] = b"\x01" * block.size
    return kept


def score(records: list[Record], received: list[str]
          ) -> tuple[dict[str, tuple[int, int]], float]:
    """Per type (kept, total): a value is kept when no word of it (two characters or more)
    reached the model at any of its occurrences; and the share of the prompt's other words
    that did not reach it."""
    kept: Counter[str] = Counter()
    total: Counter[str] = Counter()
    lost = plain = 0
    for (text, values), seen in zip(records, received, strict=True):
        arrived = survived(text, seen)
        pii = bytearray(len(text))
        for kind, value in values:
            total[kind] += 1
            leaked = False
            for at in occurrences(text, value):
                pii[at:at + len(value)] = b"\x01" * len(value)
                leaked = leaked or any(arrived.find(0, at + w.start(), at + w.end()) == -1
                                       for w in WORDS.finditer(value))
            kept[kind] += not leaked
        for w in WORDS.finditer(text):
            if pii.find(1, w.start(), w.end()) == -1:
                plain += 1
                lost += arrived.find(0, w.start(), w.end()) != -1
    return {k: (kept[k], total[k]) for k in total}, lost / plain if plain else 0.0


def occurrences(text: str, value: str) -> list[int]:
    found, at = [], text.find(value)
    while at != -1:
        found.append(at)
        at = text.find(value, at + 1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", action="store_true", help="also the shared eval set")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    sets = {"work prompts": work_prompts()} if WORK_PROMPTS.exists() else {}
    if args.shared:
        sets["shared pii-eval"] = shared()
    if args.limit:
        sets = {name: records[:args.limit] for name, records in sets.items()}
    tmp = Path(tempfile.mkdtemp())
    demo_port, port = free_port(), free_port()
    demo = f"http://127.0.0.1:{demo_port}"
    url = f"http://127.0.0.1:{port}"
    procs = [start([sys.executable, "-m", "gateway", "demo-upstream", "--port", str(demo_port)]),
             start([sys.executable, "-m", "gateway", "serve", "--config",
                    str(config(tmp, demo, port, "", ROOT / "policies/default.yaml"))])]
    try:
        wait_ready(url)
        presidio = presidio_masker()
        for name, records in sets.items():
            veil = [through_gateway(url, demo, text) for text, _ in records]
            stock = [presidio(text) for text, _ in records]  # type: ignore[operator]
            report(name, records, veil, stock)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait()
    return 0


def report(name: str, records: list[Record], veil: list[str], stock: list[str]) -> None:
    (v, v_over), (p, p_over) = score(records, veil), score(records, stock)
    print(f"\n{name}: {len(records)} prompts through the gateway; kept = no word reached "
          "the model")
    print(f"{'type':<20}{'values':>7}{'veil kept':>11}{'presidio kept':>15}")
    for kind in sorted(v, key=lambda k: -v[k][1]):
        kept, total = v[kind]
        print(f"{kind:<20}{total:>7}{kept / total:>11.3f}{p[kind][0] / total:>15.3f}")
    print(f"over-masking: veil {v_over:.1%}, presidio {p_over:.1%}")


if __name__ == "__main__":
    sys.exit(main())
