"""The gazetteer detector: names and places from the census and GeoNames lists, with the rules
that keep ordinary words out."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import DetectorFailed
from gateway.privacy.engine import DetectionEngine, Selection
from gateway.privacy.gazetteer import GazetteerDetector
from tests.unit.privacy.test_patterns_linear import assert_linear, repeat

gazetteer = GazetteerDetector()


def found(text: str) -> list[tuple[str, str]]:
    return [(text[s.start:s.end], s.entity) for s in gazetteer.detect(text)]


@pytest.mark.parametrize(("text", "value", "entity"), [
    ("Thaddeus had given his address", "Thaddeus", "PERSON"),
    ("Ask Sarah J. Okafor about it", "Sarah J. Okafor", "PERSON"),
    ("ESTHER KOWALSKI signed", "ESTHER KOWALSKI", "PERSON"),
    ("they had three: adam, kristina and caleb.", "kristina", "PERSON"),
    ("I am in Poznań for a trip", "Poznań", "LOCATION"),
    ("our office in Arendal is closed", "Arendal", "LOCATION"),
    ("shipping to KĘDZIERZYN-KOŹLE next week", "KĘDZIERZYN-KOŹLE", "LOCATION"),
    ("flights to New York and Rio de Janeiro", "New York", "LOCATION"),
    ("the Portugal team", "Portugal", "LOCATION"),
    ("We work with Civic Impulse LLC now", "Civic Impulse LLC", "ORGANIZATION"),
    ("Climate Corporation agreed", "Climate Corporation", "ORGANIZATION"),
    ("invoice from Aunt Bertha Inc. today", "Aunt Bertha Inc.", "ORGANIZATION"),
    ("Ask Evans-Bonilla about it", "Evans-Bonilla", "PERSON"),
])
def test_found(text: str, value: str, entity: str) -> None:
    assert (value, entity) in found(text)


@pytest.mark.parametrize("text", [
    "Will you review the May report in Reading? Mark the Best option.",
    "We deploy Ruby and Julia services to the University cluster.",
    "adam",  # one lowercase word is not a list of names
    "the cat, the dog and the bird",
    "The Bank is closed. Contact Support Services today.",
])
def test_ordinary_words_are_not_names_or_places(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize("make", [repeat("Sarah "), repeat("Sarah J. "), repeat("adam, "),
                                  repeat("New "), repeat("in Poznań ")],
                         ids=["first names", "initials", "lowercase list", "place prefixes",
                              "cued places"])
def test_linear_on_hostile_input(make: object) -> None:
    assert_linear(gazetteer.detect, make)  # type: ignore[arg-type]


def test_a_selection_naming_an_unloaded_gazetteer_fails_closed() -> None:
    async def run() -> None:
        engine = DetectionEngine(1)  # prepare() never called, so the lists are not loaded
        try:
            await engine.detect(["Ask Thaddeus"], Selection(frozenset({"gazetteer"})))
        finally:
            await engine.close()
    with pytest.raises(DetectorFailed):
        asyncio.run(run())
