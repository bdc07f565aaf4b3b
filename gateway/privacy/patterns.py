"""The fast pattern tier: compiled patterns, one combined expression per entity family, and
checksum validation where one exists (Luhn for cards, mod-97 for IBANs, SSA rules for SSNs,
`ipaddress` for IPs). Microseconds per kilobyte, so it runs inline on every request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator

from gateway.privacy.addresses import addresses
from gateway.privacy.identifiers import IDENTIFIERS, anywhere, in_context
from gateway.privacy.masker import COMMON_WORDS
from gateway.privacy.scripts import names_in_other_scripts
from gateway.privacy.spans import Span, non_overlapping
from gateway.privacy.words import lacks_first_word
from gateway.privacy.words import lowered as lower

Validator = Callable[[str], bool]


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def valid_card(candidate: str) -> bool:
    digits = _digits(candidate)
    return 12 <= len(digits) <= 19 and luhn(digits) and len(set(digits)) > 1


def valid_iban(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def valid_ssn(candidate: str) -> bool:
    digits = _digits(candidate)
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (area not in ("000", "666") and area[0] != "9" and group != "00"
            and serial != "0000" and len(set(digits)) > 1)


def valid_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    return True


DATE_LIKE = re.compile(r"^\d{1,4}[-./]\d{1,2}[-./]\d{1,4}$")


def valid_phone(candidate: str) -> bool:
    core = re.split(r"\s*(?:x|ext\.?)\s*\d", candidate, maxsplit=1, flags=re.I)[0]
    digits = _digits(core)
    if not 7 <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    if DATE_LIKE.match(core.strip()):
        return False
    # Bare digit runs must be long enough to be a number nobody writes as a quantity.
    return not (core.isdigit() and len(core) < 10)


def _secret(regex: str, *triggers: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A secret pattern runs only if one of its literal triggers occurs in the (lower-cased)
    text: `in` is a C-speed scan, a regex alternation tries every branch at every position."""
    return re.compile(regex), triggers


# Every pattern is linear in its input: a match can only start where its run of characters
# starts (a lookbehind on the run's own class), runs are possessive (`++`, `{n,}+`: nothing to
# backtrack into), and the PEM block and `password=` assignments are found by anchored scans
# (below) instead of a lazy `[\s\S]+?` or overlapping matches. tests/unit/privacy/
# test_patterns_linear.py checks that doubling a hostile input at most doubles the work.
B64URL = "A-Za-z0-9_-"
SECRETS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    _secret(r"\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[0-9A-Z]{16}\b",  # AWS access key id
            "akia", "asia", "abia", "acca", "aida", "aroa"),
    _secret(r"(?i:aws_?secret_?access_?key|secret_?access_?key)[\"']?\s*+[:=]\s*+[\"']?"
            r"(?P<v>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])", "access"),
    _secret(rf"(?<![{B64URL}])sk-ant-(?:api|admin)\d{{2}}-[{B64URL}]{{32,}}+", "sk-ant-"),
    _secret(rf"(?<![{B64URL}])sk-(?:proj-|svcacct-|admin-|None-)?[{B64URL}]{{32,}}+",
            "sk-"),  # OpenAI
    _secret(r"(?<![A-Za-z0-9_])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}+\b",
            "_live_", "_test_"),  # Stripe
    _secret(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,}+\b"
            r"|(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{60,}+\b",  # GitHub
            "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    _secret(rf"(?<![{B64URL}])glpat-[{B64URL}]{{20}}\b", "glpat-"),  # GitLab
    _secret(r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,}+", "xox"),  # Slack tokens
    _secret(r"https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}+", "hooks.slack.com"),
    _secret(rf"(?<![{B64URL}])AIza[{B64URL}]{{35}}\b", "aiza"),  # Google API key
    _secret(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}+\b", "hf_"),  # Hugging Face
    _secret(r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}\b", "npm_"),  # npm
    _secret(r"(?i:AccountKey|SharedAccessKey)=(?P<v>[A-Za-z0-9+/]{40,}+={0,2})",  # Azure
            "accountkey=", "sharedaccesskey="),
    _secret(rf"(?<![{B64URL}])eyJ[{B64URL}]{{8,}}+\.eyJ[{B64URL}]{{8,}}+\.[{B64URL}]{{16,}}+",
            "eyj"),  # JWT
    # password inside a connection URL: scheme://user:PASSWORD@host
    _secret(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]{1,20}+://[^\s:/@]{0,64}+:"
            r"(?P<v>[^\s@/]{1,128}+)@[\w.-]++", "://"),
)
# PEM private keys (RSA, EC, OPENSSH, ENCRYPTED, PKCS#8): a BEGIN header, then the next END
# header; found by str.find, so a thousand BEGINs without an END cost one scan, not a thousand.
PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY-----")
PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ ){0,4}PRIVATE KEY-----")

# password=..., "api_key": "..." and the like: anchored where a keyword occurs (str.find).
SECRET_KEYWORDS = ("password", "passwd", "pwd", "passphrase", "secret", "api_key", "api-key",
                   "apikey", "access_token", "access-token", "accesstoken", "auth_token",
                   "auth-token", "authtoken", "pass", "passwort", "mot de passe", "contraseña",
                   "senha", "wachtwoord", "hasło", "haslo", "parola", "kennwort", "salasana",
                   "lösenord", "adgangskode", "passord")
ASSIGNED_SECRET = re.compile(
    rf"(?i:(?P<k>{'|'.join(re.escape(k) for k in SECRET_KEYWORDS)})[\"']?(?P<sep>\s*+[:=]|"
    r"(?:[ \t]+(?:is|ist|est|es|é|:))?[ \t]+)\s*+[\"']?)(?P<v>[^\s\"',;]{8,}+)")


def _looks_secret(value: str) -> bool:
    """After a password word with no `=` or `:` ("Passwort Kessler!2024bau"), or after the
    short "pass", only what looks made up counts: a digit or a symbol beside letters, so
    "password protection" and "pass: everything" are prose."""
    return any(ch.isdigit() for ch in value) or not value.isalpha()


def _word_starts(lowered: str, words: tuple[str, ...]) -> list[int]:
    """Where any of `words` starts a word, found by str.find (C speed, no regex); a phrase
    whose first word the text does not have is not looked for at all."""
    starts: set[int] = set()
    for word in words:
        if lacks_first_word(lowered, word):
            continue
        at = lowered.find(word)
        while at != -1:
            if at == 0 or not lowered[at - 1].isalnum():
                starts.add(at)
            at = lowered.find(word, at + 1)
    return sorted(starts)

# ASCII boundaries, not \w: an address written straight after Chinese or Thai text ("请联系
# john@example.com谢谢") has a letter of another script on each side.
EMAIL = re.compile(
    r"(?<![A-Za-z0-9\u00c0-\u024f._%+-])[A-Za-z0-9\u00c0-\u024f][A-Za-z0-9\u00c0-\u024f._%+-]"
    r"{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9_-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}"
                  r"(?: ?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}"
                  r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[\w.]+)?(?![\w:])")

# Digit families run only inside numeric regions: one cheap pass finds them all.
NUMERIC_REGION = re.compile(r"[+(]?\d[\d\s().+\-/x]{4,}\d(?:\s*ext\.?\s*\d+)?")
# Groups separated by a space, two, a hyphen, a dot or a slash ("4111.1111.1111.1111").
CARD = re.compile(r"(?<![\d-])(?:\d(?:[ ./-] ?)?){11,18}\d(?![\d-])")
# A Polish account number written without its country code (NRB: 26 digits), checked as the
# IBAN it is.
NRB = re.compile(r"(?<![\d-])\d{2}(?: ?\d{4}){6}(?![\d-])")
SSN = re.compile(r"(?<![\d-])\d{3}[- ]\d{2}[- ]\d{4}(?![\d-])")
IPV4 = re.compile(r"(?<![\w.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)")
PHONE = re.compile(  # on one line: a status code and a timestamp below it are not a number
    r"(?<![\w+])(?:\+\d{1,3}[ \t.-]?)?(?:\(\d{1,4}\)[ \t.-]?)?\d{1,5}(?:[ \t.-]?\d{2,5}){0,5}"
    r"(?:\s*(?:x|ext\.?)\s*\d{1,6})?(?![\w])")

Match = tuple[int, int, str, float]

# (entity, expression, score, validator), in priority order within the numeric regions
def valid_nrb(candidate: str) -> bool:
    return valid_iban("PL" + candidate.replace(" ", ""))


NUMERIC: tuple[tuple[str, re.Pattern[str], float, Validator], ...] = (
    ("IBAN", NRB, 0.95, valid_nrb),
    ("CREDIT_CARD", CARD, 1.0, valid_card),
    ("US_SSN", SSN, 0.95, valid_ssn),
    ("IP_ADDRESS", IPV4, 0.95, valid_ip),
    ("PHONE", PHONE, 0.75, valid_phone),
)


def _pem_blocks(text: str) -> Iterator[Match]:
    at = 0
    while (begin := PEM_BEGIN.search(text, at)) is not None:
        end = _pem_end(text, begin.end())
        if end is None:
            return  # no END after this BEGIN: none after any later BEGIN either
        yield begin.start(), end, "SECRET", 0.95
        at = end


def _pem_end(text: str, at: int) -> int | None:
    while (found := text.find("-----END ", at)) != -1:
        if m := PEM_END.match(text, found):
            return m.end()
        at = found + 1
    return None


def _secrets(text: str) -> Iterator[Match]:
    lowered = lower(text)
    if "private key-----" in lowered:
        yield from _pem_blocks(text)
    consumed = 0  # `password=password=...`: a keyword inside a value already found is not
    for at in _word_starts(lowered, SECRET_KEYWORDS):  # another start
        if at < consumed:
            continue
        if (m := ASSIGNED_SECRET.match(text, at)) and (_looks_secret(m.group("v")) or (
                m.group("sep").strip() and (m.group("k").casefold() != "pass"
                                            or text[at - 1:at] in ("_", "-", ".")))):
            consumed = m.end("v")
            yield m.start("v"), m.end("v"), "SECRET", 0.95
    for regex, triggers in SECRETS:
        if any(t in lowered for t in triggers):
            for m in regex.finditer(text):
                start, end = m.span("v") if "v" in regex.groupindex and m.group("v") \
                    else m.span()
                yield start, end, "SECRET", 0.95


def _words(text: str) -> Iterator[Match]:
    if "@" in text:
        for m in EMAIL.finditer(text):
            yield m.start(), m.end(), "EMAIL", 1.0
    for m in IBAN.finditer(text):
        if valid_iban(m.group()):
            yield m.start(), m.end(), "IBAN", 1.0
    if "::" in text or text.count(":") >= 7:  # compressed, or all eight groups written out
        for m in IPV6.finditer(text):
            if m.group().count(":") >= 2 and valid_ip(m.group()):
                yield m.start(), m.end(), "IP_ADDRESS", 0.95


# A person's name right after a cue that introduces one: "my name is", "Dear", "Dr.", "my
# daughter". Names are 1-3 capitalised words (any script), an initial allowed in the middle.
# A word of a name, apostrophes (ASCII and U+2019) and hyphens inside; or an initial ("D.").
# Only initials carry a dot: "Tamm." ends a sentence, and the next word is not the name's.
_WORD = r"(?:[^\W\d_]\.|[^\W\d_]+(?:['\u2019-][^\W\d_]+)*)"
NAME_CUES = (
    "my name is", "my name's", "name is", "i am", "i'm", "this is", "named", "called", "dear",
    "hi", "hello", "hey", "sincerely", "regards", "mr", "mrs", "ms", "mx", "miss", "dr", "prof",
    "sir", "patient", "customer", "client", "employee", "colleague", "manager", "wife",
    "husband", "son", "daughter", "kid", "child", "mother", "father", "mom", "dad", "brother",
    "sister", "friend", "partner", "boss", "name", "witness", "passenger", "guest", "tenant",
    "requester", "applicant",
    # other languages: "Meu nome é", "Frau", "Monsieur", "Sr.", "Beste mevrouw", …
    "nome", "nom", "nombre", "naam", "meu nome é", "mi nombre es", "me llamo", "je m'appelle",
    "ich heiße", "mein name ist", "mijn naam is", "mi chiamo", "frau", "herr", "monsieur",
    "madame", "mademoiselle", "mme", "mlle", "sr", "sra", "srta", "señor", "señora", "don",
    "doña", "dott", "dott.ssa", "signor", "signora", "sig", "sig.ra", "mevrouw", "meneer",
    "dhr", "mevr", "pan", "pani", "cliente", "paciente", "paziente", "patientin", "kunde",
    "kundin", "mitarbeiter", "medewerker", "empleado", "cordialement", "saludos", "grüße",
    "groeten", "cumprimentos", "atenciosamente", "distinti saluti",
)
# After these a name may be written in lower case ("my name is borna jerković").
LOWERCASE_CUES = ("my name", "real name", "his name", "her name", "their name", "nome é",
                  "nombre es", "me llamo", "je m'appelle", "ich heiße", "mein name",
                  "mijn naam", "mi chiamo")
# Anchored at a cue found by str.find: the cue (whole word), optional "." or ",", the name.
NAME_AFTER_CUE = re.compile(
    rf"(?i:(?:{'|'.join(re.escape(c) for c in NAME_CUES)})\b)\.?[,:]?[ \t]+"
    rf"(?P<v>{_WORD}(?:[ \t]+{_WORD}){{0,2}})")
WORD = re.compile(r"\S+")
NOT_NAMES = frozenset({
    "sir", "madam", "team", "all", "everyone", "there", "support", "customer", "customers",
    "the", "a", "an", "my", "our", "your", "this", "that", "here", "not", "just", "so", "very",
    "going", "looking", "writing", "trying", "happy", "sorry", "glad", "new", "from", "with",
    "in", "at", "on", "to", "and", "or", "is", "it", "i", "we", "you", "he", "she", "they",
    "service", "services", "department", "manager", "friends", "folks", "guys", "world",
    "but", "because", "although", "though", "however", "also", "too", "now", "then", "if",
    "when", "as", "was", "has", "had", "will", "would", "can", "could", "please", "thanks",
})
TITLES = frozenset({"mr", "mrs", "ms", "mx", "miss", "dr", "prof", "sir", "herr", "frau",
                    "mme", "monsieur", "madame"})
STRONG_CUES = ("name", "i am", "i'm", "dear", "mr", "mrs", "ms", "mx", "miss", "dr", "prof",
               "nome", "nombre", "naam", "frau", "herr", "monsieur", "madame", "mme", "sr",
               "señor", "señora", "signor", "signora", "mevrouw", "meneer")


# A weak cue: "by" + at least two capitalised words ("a song by Szabina Gelencsér").
BY_NAME = re.compile(rf"(?i:\bby\b):?[ \t]+(?P<v>{_WORD}(?:[ \t]+{_WORD}){{1,2}})")


def _cue_starts(text: str) -> Iterator[tuple[int, re.Pattern[str]]]:
    """Each cue occurrence, found with str.find (C speed), in order, with the name pattern to
    anchor there: one regex attempt per cue instead of an alternation tried everywhere."""
    lowered = lower(text)
    starts = [(at, NAME_AFTER_CUE) for at in _word_starts(lowered, NAME_CUES)]
    starts += [(at, BY_NAME) for at in _word_starts(lowered, ("by",))]
    starts.sort(key=lambda start: start[0])
    return iter(starts)


def _names(text: str) -> Iterator[Match]:
    consumed = 0  # "Dear Dear Dear ...": a cue inside a name already found starts nothing new
    for at, pattern in _cue_starts(text):
        if at < consumed or not (m := pattern.match(text, at)):
            continue
        # "my name is borna jerković": after a cue that says a name follows, case is no sign
        cue = text[m.start():m.start("v")].casefold()
        lowercase_ok = any(c in cue for c in LOWERCASE_CUES)
        words: list[re.Match[str]] = []
        for word in WORD.finditer(m.group("v")):
            bare = word.group().rstrip(".")
            if not words and bare.casefold() in TITLES:
                break  # "Dear Mr. Lee": the title is a cue of its own, found next
            if bare.casefold() in NOT_NAMES or not (bare[:1].isupper() or (
                    lowercase_ok and bare.casefold() not in COMMON_WORDS)):
                break
            words.append(word)
        while words and len(words[-1].group().rstrip(".")) == 1:  # no trailing initial
            words.pop()
        if not words or (pattern is BY_NAME and len(words) < 2):
            continue
        start = m.start("v")
        end = start + words[-1].start() + len(words[-1].group().rstrip("."))
        consumed = end
        cue = text[m.start():start].casefold()
        yield start, end, "PERSON", 0.9 if any(c in cue for c in STRONG_CUES) else 0.6


# A speaker in a pasted chat log: "[09:33] marco: ..." or "Anja Wolf 10:08: ...", at a line's
# start; a role ("User", "Agent") is not a name.
_HANDLE = r"[^\W\d_][\w.'\u2019-]{1,20}+"
SPEAKER = re.compile(
    rf"(?m)^(?:\[[^\]\n]{{1,25}}\][ \t]*(?P<a>{_HANDLE}(?:[ \t]{_HANDLE})?):[ \t]"
    rf"|(?P<b>{_HANDLE}(?:[ \t]{_HANDLE})?)[ \t]+\d{{1,2}}:\d{{2}}(?::\d{{2}})?:[ \t])")
ROLES = frozenset({"user", "agent", "assistant", "system", "bot", "customer", "support",
                   "admin", "moderator", "mod", "me", "you", "operator", "caller", "client",
                   "host", "guest", "staff", "team", "helpdesk", "service", "ai", "human"})


def _speakers(text: str) -> Iterator[Match]:
    if "\n" not in text and ":" not in text:
        return
    for m in SPEAKER.finditer(text):
        group = "a" if m.group("a") else "b"
        if m.group(group).casefold().split()[0] not in ROLES:
            yield m.start(group), m.end(group), "PERSON", 0.85


def _numbers(text: str) -> Iterator[Match]:
    for region in NUMERIC_REGION.finditer(text):
        # endpos truncates what lookaheads can see: give them the two characters after the
        # region, so "1.2.3.4a" is not an address and "4111...1111-2" is not a card.
        lo, hi = region.start(), region.end() + 2
        for entity, regex, score, validate in NUMERIC:
            for m in regex.finditer(text, lo, hi):
                if validate(m.group()):
                    yield m.start(), m.end(), entity, score


class PatternDetector:
    """EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS and SECRET, by pattern + checksum.

    Families run in priority order; a later family's match that overlaps an earlier one is
    dropped (a card number is not also a phone number, a key inside a URL is one secret)."""

    name = "patterns"
    entities = frozenset({"SECRET", "EMAIL", "IBAN", "IP_ADDRESS", "CREDIT_CARD", "US_SSN",
                          "PHONE", "PERSON", "ADDRESS", *IDENTIFIERS})

    def detect(self, text: str) -> list[Span]:
        return non_overlapping((Span(start, end, entity, score, self.name)
                                for family in (_secrets, _words, anywhere, in_context,
                                               addresses, _numbers, _speakers, _names,
                                               names_in_other_scripts)
                                for start, end, entity, score in family(text)), len(text))
