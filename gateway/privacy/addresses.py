"""Street addresses, as one span from the street to the postcode.

Formats (the street line is what is found; the rest joins it when it follows):
  number first   US, UK, Irish, Indian, Australian: `221B Baker Street`, `1600 Pennsylvania
                 Ave NW, Suite 200`, `12, MG Road`; French: `12 bis rue de la Paix`
  type first     Spanish, Italian, Portuguese, Brazilian: `Calle Mayor 5`, `C/ Alcalá, 21`,
                 `Via Roma 10`, `Rua Augusta, 1500`
  suffix         German, Austrian, Swiss, Dutch, Flemish: `Hauptstraße 5`, `Berliner Str. 12a`,
                 `Keizersgracht 123`
  blocks         Japanese, romanised: `1-2-3 Jingumae, Shibuya-ku`
  postcodes      UK (`SW1A 2AA`), US city, state and ZIP (`Springfield, IL 62704`) anywhere;
                 five-digit EU codes with a city (`75008 Paris`, `10115 Berlin`), Dutch
                 `1012 AB Amsterdam`, Brazilian CEP `01310-100`, Japanese `150-0001`, Indian PIN
                 `560001` only next to a street line or after a word such as "address".
A street line and the city and postcode after it (on the same line or the next) are merged into
one span, so no part of an address reaches the model beside a placeholder.

Every expression starts only at a word or number start and is bounded, and trigger words are
found with str.find, so the work is linear in the text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

from gateway.privacy.words import lowered as lower

Match = tuple[int, int, str, float]
CAP = r"[A-ZÀ-ÞĀ-Ž][\w'\u2019.-]{0,30}+"
# CAP at a word's start, written letter first so the engine can skip ahead to capitals
CAP_FIRST = r"[A-ZÀ-ÞĀ-Ž](?<![\w-][A-ZÀ-ÞĀ-Ž])[\w'\u2019.-]{0,30}+"
CONNECT = (r"(?:de|du|des|la|le|l'|d'|del|della|delle|dei|di|do|da|dos|das|van|von|der|den|"
           r"het|am|an|of|the|y|e|al|el)")
ORDINAL = r"\d{1,3}(?:st|nd|rd|th)\b"  # "7th Street", "2nd Main Road"
NAME_WORD = rf"(?:{CAP}|{CONNECT}|{ORDINAL})"
EN_TYPES = (r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|"
            r"place|pl|terrace|close|crescent|gardens|grove|square|sq|parkway|pkwy|highway|hwy|"
            r"circle|cir|mews|row|walk|rise|trail|plaza|marg|nagar|colony|layout|salai|"
            r"chowk|vihar|enclave|crossing)\b\.?")
UNIT = r"(?:,?[ \t]*(?i:apt|apartment|suite|ste|unit|flat|floor|room|#)\.?[ \t]*[\w-]{1,6})?"
NUMBER_FIRST = re.compile(
    rf"[0-9](?<![\w/-][0-9])\d{{0,4}}[A-Za-z]?(?:[-/]\d{{1,4}}[A-Za-z]?)?,?[ \t]+"
    rf"(?:{NAME_WORD}[ \t]+){{1,4}}?{EN_TYPES}(?:[ \t]+(?:NW|NE|SW|SE|N|S|E|W)\b)?{UNIT}")
FRENCH = re.compile(
    rf"[0-9](?<![\w/-][0-9])\d{{0,3}}(?:[ \t]?(?:bis|ter|quater|[A-Za-z])\b)?,?[ \t]+"
    rf"(?i:rue|avenue|av\.|boulevard|bd|place|all[ée]e|impasse|quai|chemin|route|cours|"
    rf"passage)[ \t]+(?:{NAME_WORD}[ \t]*){{1,5}}")
TYPE_FIRST = re.compile(
    rf"(?<!\w)(?:Calle|C/|Avenida|Avda\.?|Av\.|Plaza|Paseo|Camino|Carrer|Carretera|Ronda|"
    rf"Travesía|Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Strada|Rua|Travessa|Alameda|"
    rf"Praça|Rodovia|Estrada|Rue|Chaussée|ul\.|al\.|pl\.|Am|Im|An der|In der|Auf der|"
    rf"Auf dem|Zum|Zur)[ \t]*(?:{NAME_WORD}[ \t]*){{1,5}}?,?[ \t]*"
    rf"(?:n[º°o]\.?|n\.º|núm\.?|num\.?)?[ \t]*\d{{1,5}}[A-Za-z]?(?![\d])"
    rf"(?:[ \t]*[-/,][ \t]*\d{{1,4}}[º°ª]?[A-Za-z]?(?![\d]))?")
SUFFIX = re.compile(
    r"[A-ZÄÖÜ](?<![\w-][A-ZÄÖÜ])[\w'-]{0,30}?[ \t-]?(?i:straße|strasse|str\.|weg|gasse|platz|allee|"
    r"ring|damm|ufer|chaussee|pfad|steig|straat|laan|plein|gracht|kade|dijk|singel|hof|"
    r"markt|dreef|gatan|gata|vägen|vagen|veien|vej|gade|katu|tie|polku)[ \t]+\d{1,3}(?!\d)"
    r"(?:/\d{1,4})?[ \t]?[a-zA-Z]?\b")
# A house, plot or door number first, the street on the lines after it ("No. 17, 4th Street",
# "Plot 22, Road No. 12, Banjara Hills"), as Indian addresses are written.
HOUSE_FIRST = re.compile(r"[NPHDFBS](?<![\w-][NPHDFBS])"
                         r"(?:o|lot|ouse|oor|lat(?:[ \t]+No)?|lock|hop)\.?[ \t]*\d{1,5}[A-Za-z]?"
                         r"(?:/\d{1,4})?(?=[ \t]*,)")
# Korean, romanised: "21 Teheran-ro 52-gil"
KOREAN = re.compile(r"[0-9](?<![\w-][0-9])\d{0,3}(?:-\d{1,4})?[ \t]+[A-Z][a-z]+-(?:ro|gil|daero)\b"
                    r"(?:[ \t]+\d{1,4}(?:-gil)?)?")
# Chinese: city and district, then a road, street or lane and a number with 号, floor, room
CHINESE = re.compile(r"(?:[\u4e00-\u9fff]{2,4}?(?:省|市))?(?:[\u4e00-\u9fff]{2,4}?(?:区|县|镇))?"
                     r"[\u4e00-\u9fff]{1,8}?(?:路|街|道|巷|胡同)[\u4e00-\u9fff]{0,4}?\d{1,5}号"
                     r"(?:\d{1,3}(?:楼|层|室|单元))*")
# A flat or suite on its own ("Apt. 117", "Suite 464"): the part of an address that names one
# household in a building.
UNIT_ALONE = re.compile(r"[ASFU](?<![\w-][ASFU])(?:pt|partment|uite|te|lat|nit)\.?[ \t]*#?\d{1,5}"
                        r"[A-Za-z]?(?![\w-])")
JAPANESE = re.compile(
    rf"[0-9](?<![\w-][0-9])\d{{0,3}}-\d{{1,4}}(?:-\d{{1,4}})?[ \t]+{CAP}"
    rf"(?:,?[ \t]*{CAP}-(?i:ku|shi|gun|cho|machi)\b)?")
US_STATES = ("AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|"
             "NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC|PR")
STRONG_POSTCODES = (
    re.compile(r"[A-PR-UWYZ](?<![A-Za-z0-9][A-PR-UWYZ])[A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2}"
               r"(?![A-Za-z0-9])"),  # UK
    US_CITY_STATE_ZIP := re.compile(rf"(?<![\w-])(?:{CAP}[ \t]+){{0,2}}{CAP},[ \t]*"
                                    rf"(?:{US_STATES})[ \t]+\d{{5}}(?:-\d{{4}})?(?!\d)"),
    re.compile(r"〒[ \t]?\d{3}-\d{4}(?!\d)"),  # Japanese, with its mark
)
WEAK_POSTCODES = (
    re.compile(rf"[0-9](?<![\w-][0-9])\d{{4}}[ \t]+{CAP}(?:[ \t-]{CAP}){{0,2}}"),  # DE FR ES IT
    # NL
    re.compile(rf"[0-9](?<![\w-][0-9])\d{{3}}[ \t]?[A-Z]{{2}}(?![A-Za-z0-9])(?:[ \t]+{CAP})?"),
    re.compile(r"[0-9](?<![\w-][0-9])\d{4}-\d{3}(?!\d)"),  # BR CEP
    # BE AT CH DK NO AU
    re.compile(rf"[0-9](?<![\w-][0-9])\d{{3}}[ \t]+{CAP}(?:[ \t-]{CAP}){{0,2}}"),
    re.compile(rf"[0-9](?<![\w-][0-9])\d{{1}}-\d{{3}}[ \t]+{CAP}"),  # PL
    # Japanese and Indian, after their city
    JAPANESE_POSTCODE := re.compile(rf"{CAP_FIRST},?[ \t]+\d{{3}}-\d{{4}}(?![\d-])"),
    INDIAN_PIN := re.compile(rf"{CAP_FIRST}[ \t]*[-\u2013,]?[ \t]*[1-9]\d{{2}} ?\d{{3}}"
                             r"(?![\d-]| \d)"),
)
STREETS = (NUMBER_FIRST, FRENCH, TYPE_FIRST, SUFFIX, JAPANESE, KOREAN, CHINESE, HOUSE_FIRST,
           UNIT_ALONE)
# What may follow a street line, each on the same line after a comma or on the next line: a
# unit, a city or region or country (capitalised words, or upper case), a postcode; up to four.
_PLACE = rf"(?:{CAP}|[A-Z]{{2,}}|{ORDINAL}|{CONNECT}(?=[ \t]+[A-Z]))"
_UNIT_WORD = (r"(?i:apt|apto|apartment|apartamento|suite|ste|flat|unit|floor|piso|planta|"
              r"puerta|escalera|esc|izquierda|izda|derecha|dcha|andar|bloco|bloque|sala|étage|"
              r"stiege|tür|top|room|building|bldg|tower|wing)\b\.?(?:[ \t]*(?:no\.?)?[ \t]*"
              r"#?[\w-]{1,6}+)?")
_LINE = (rf"(?:{_UNIT_WORD}|\d{{1,4}}[º°ª][ \t]*(?:{_UNIT_WORD})?|"
         rf"{_PLACE}(?:[ \t]+(?:{_PLACE}|No\.?[ \t]*\d{{1,5}}|\d{{4,6}})){{0,4}}|\d{{4,6}}"
         rf"|\d{{2}}-\d{{3}}|\d{{5}}-\d{{3}})")
TAIL = re.compile(rf"(?:[ \t]*(?:[,\n]|[ \t]-[ \t])[ \t]*\n?[ \t]*{_LINE}"
                  rf"|[ \t]+{_UNIT_WORD}){{0,5}}")
ADDRESS_WORDS = ("address", "adresse", "anschrift", "dirección", "direccion", "indirizzo",
                 "endereço", "endereco", "adres", "domicilio", "residing at", "resides at",
                 "lives at", "living at", "ship to", "deliver to", "located at", "mailing",
                 "postcode", "post code", "zip", "plz", "cep", "pin code", "postal code",
                 "code postal", "código postal", "cap ", "住所")
NEAR = 80  # a weak postcode within this many characters after a street line or address word
_SEPARATORS = r"[ \t,;\n\u2013-]"
DIGIT = re.compile(r"\d")
JOINABLE = re.compile(rf"{_SEPARATORS}{{0,6}}(?:(?:{CAP}|{CONNECT}){_SEPARATORS}{{1,6}}){{0,3}}")


# The literal each street form cannot do without (lower case), so a form runs only on a
# text that has one: most prompts have no "rue", no "-ro", no 号.
NEEDS: dict[re.Pattern[str], tuple[str, ...]] = {
    FRENCH: ("rue ", "avenue ", "av. ", "bd ", "boulevard ", "place ", "allée ", "allee ",
             "impasse ", "quai ", "chemin ", "route ", "cours ", "passage "),
    KOREAN: ("-ro", "-gil", "-daero"), CHINESE: ("号",),
}


# And what the postcodes and type-first streets cannot do without, as a cheap expression that
# starts with a literal or a digit (the engine skips ahead to those at C speed).
PRECHECK: dict[re.Pattern[str], re.Pattern[str]] = {
    JAPANESE: re.compile(r"[0-9]-[0-9]{1,4}(?:-[0-9]{1,4})?[ \t]+[A-Z]"),
    HOUSE_FIRST: re.compile(r"(?:No|Plot|House|Door|Flat|Block|Shop)\.?[ \t]*[0-9]"),
    UNIT_ALONE: re.compile(r"(?:Apt|Apartment|Suite|Ste|Flat|Unit)\.?[ \t]*#?[0-9]"),
    US_CITY_STATE_ZIP: re.compile(r",[ \t]*[A-Z]{2}[ \t]+[0-9]{5}"),
    JAPANESE_POSTCODE: re.compile(r"[0-9]{3}-[0-9]{4}"),
    INDIAN_PIN: re.compile(r"[0-9]{3} ?[0-9]{3}"),
    TYPE_FIRST: re.compile("|".join(re.escape(w) for w in (
        "Calle", "C/", "Av", "Plaza", "Paseo", "Camino", "Carrer", "Carretera", "Ronda",
        "Travesía", "Via", "Piazza", "Corso", "Largo", "Vicolo", "Strada", "Rua", "Travessa",
        "Alameda", "Praça", "Rodovia", "Estrada", "Rue", "Chaussée", "ul.", "al.", "pl.", "Am ",
        "Im ", "An der", "In der", "Auf d", "Zum", "Zur"))),
}


def _runs(regex: re.Pattern[str], text: str, lowered: str) -> bool:
    needs = NEEDS.get(regex)
    if needs is not None and not any(word in lowered for word in needs):
        return False
    precheck = PRECHECK.get(regex)
    return precheck is None or precheck.search(text) is not None


SUFFIX_WORDS = ("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "ring", "damm",
                "ufer", "chaussee", "pfad", "steig", "straat", "laan", "plein", "gracht", "kade",
                "dijk", "singel", "hof", "markt", "dreef", "gatan", "gata", "vägen", "vagen",
                "veien", "vej", "gade", "katu", "tie", "polku")
NUMBER_AFTER = re.compile(r"[ \t]+[0-9]")


def _suffixed(text: str, lowered: str) -> Iterator[re.Match[str]]:
    """SUFFIX where a suffix word is followed by a house number, found by str.find and
    matched in a window there (tried at every capital, the expression costs 10x more)."""
    starts: set[int] = set()
    for word in SUFFIX_WORDS:
        at = lowered.find(word)
        while at != -1:
            end = at + len(word)
            if NUMBER_AFTER.match(text, end):
                starts.add(max(0, at - 34))
            at = lowered.find(word, end)
    for window in sorted(starts):
        m = SUFFIX.search(text, window, window + 80)
        if m is not None:
            yield m


def addresses(text: str) -> Iterator[Match]:
    if DIGIT.search(text) is None:
        return
    lowered = lower(text)
    found = sorted({(m.start(), _tail(text, m.end())) for m in _suffixed(text, lowered)} | {
        (m.start(), _tail(text, m.end())) for regex in STREETS
        if regex is not SUFFIX and _runs(regex, text, lowered) for m in regex.finditer(text)})
    found += [(m.start(), m.end()) for regex in STRONG_POSTCODES
              if _runs(regex, text, lowered) for m in regex.finditer(text)]
    anchors = [at for span in found for at in span] + _address_words(lowered)
    anchors.sort()
    for regex in WEAK_POSTCODES:
        if not anchors or not _runs(regex, text, lowered):
            continue  # a weak postcode counts only near a street or an address word
        for m in regex.finditer(text):
            if _near_before(anchors, m.start()):
                found.append((m.start(), m.end()))
    yield from ((start, end, "ADDRESS", 0.85) for start, end in _merged(text, sorted(found)))


def _tail(text: str, end: int) -> int:
    tail = TAIL.match(text, end)
    return tail.end() if tail else end


def _address_words(lowered: str) -> list[int]:
    ends = []
    for word in ADDRESS_WORDS:
        at = lowered.find(word)
        while at != -1:
            ends.append(at + len(word))
            at = lowered.find(word, at + 1)
    return ends


def _near_before(anchors: list[int], at: int) -> bool:
    """Whether an anchor ends within NEAR characters before `at` (anchors sorted)."""
    i = bisect.bisect_right(anchors, at) - 1
    return i >= 0 and at - anchors[i] <= NEAR


def _merged(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping spans, and spans with only separators and up to three capitalised words
    (a city) between them, as one."""
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged:
            last_start, last_end = merged[-1]
            if start <= last_end or (start - last_end <= 60 and (
                    (gap := JOINABLE.match(text, last_end)) is not None
                    and gap.end() >= start)):
                merged[-1] = (last_start, max(last_end, end))
                continue
        merged.append((start, end))
    return [(start, start + len(text[start:end].rstrip(".,;:- \t\n"))) for start, end in merged]
