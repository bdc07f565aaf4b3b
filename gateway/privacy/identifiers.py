"""National identifiers, and numbers that identify a person only where the text says what they
are (dates of birth, passports, driving licences, bank accounts, medical records, customers).

Each national identifier is checked by its own rule (check digits or letters where the format
has one: NHS mod 11, Steuer-ID ISO 7064, NIR mod 97, BSN 11-proof, DNI/NIE mod 23, codice
fiscale check letter, Aadhaar Verhoeff, CPF mod 11). Formats with a strong check are found
anywhere; those whose check passes one random number in ten or eleven (NHS, Steuer-ID, BSN,
Aadhaar, CPF unpunctuated, SSN without separators) only near a word that names them.

Every expression here is anchored where a run starts and bounded, and context words are found
with str.find, so the work is linear in the text (tests/unit/privacy/test_patterns_linear.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gateway.privacy.words import lacks_first_word
from gateway.privacy.words import lowered as lower

Match = tuple[int, int, str, float]
CONTEXT_WINDOW = 48  # characters before a value in which a naming word counts


def _digits(text: str) -> list[int]:
    return [ord(ch) - 48 for ch in text if "0" <= ch <= "9"]


def nhs_ok(text: str) -> bool:
    d = _digits(text)
    if len(d) != 10 or len(set(d)) == 1:
        return False
    check = 11 - sum(x * (10 - i) for i, x in enumerate(d[:9])) % 11
    return (0 if check == 11 else check) == d[9]


def steuer_id_ok(text: str) -> bool:
    """German tax id: 11 digits, no leading zero, one digit repeated in the first ten, and
    the ISO 7064 MOD 11,10 check digit."""
    d = _digits(text)
    if len(d) != 11 or d[0] == 0 or len(set(d[:10])) not in (8, 9):
        return False
    product = 10
    for x in d[:10]:
        total = (x + product) % 10 or 10
        product = total * 2 % 11
    return (11 - product) % 10 == d[10]


def nir_ok(text: str) -> bool:
    """French social security number: 13 characters (Corsica's 2A/2B as 19/18) and a key of
    97 minus their value mod 97."""
    raw = re.sub(r"[\s.]", "", text).upper()
    if len(raw) != 15:
        return False
    body = raw[:13].replace("2A", "19", 1) if raw[5:7] == "2A" else \
        raw[:13].replace("2B", "18", 1) if raw[5:7] == "2B" else raw[:13]
    if not body.isdigit() or not raw[13:].isdigit():
        return False
    return 97 - int(body) % 97 == int(raw[13:])


def bsn_ok(text: str) -> bool:
    d = _digits(text)
    if len(d) != 9 or len(set(d)) == 1:
        return False
    return (sum(x * (9 - i) for i, x in enumerate(d[:8])) - d[8]) % 11 == 0


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_ok(text: str) -> bool:
    """Spanish DNI (8 digits and a letter) or NIE (X, Y or Z, 7 digits, a letter)."""
    raw = re.sub(r"[\s.-]", "", text).upper()
    if raw[:1] in ("X", "Y", "Z"):
        raw = str("XYZ".index(raw[0])) + raw[1:]
    return len(raw) == 9 and raw[:8].isdigit() and DNI_LETTERS[int(raw[:8]) % 23] == raw[8]


CF_ODD = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                  (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4,
                   18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23), strict=True))


def codice_fiscale_ok(text: str) -> bool:
    raw = text.upper()
    if len(raw) != 16:
        return False
    total = 0
    for i, ch in enumerate(raw[:15]):
        if i % 2 == 0:
            total += CF_ODD[ch]
        else:
            total += int(ch) if ch.isdigit() else ord(ch) - 65
    return chr(65 + total % 26) == raw[15]


VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6), (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4), (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2), (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8))


def aadhaar_ok(text: str) -> bool:
    d = _digits(text)
    if len(d) != 12 or d[0] < 2 or len(set(d)) == 1:
        return False
    check = 0
    for i, x in enumerate(reversed(d)):
        check = VERHOEFF_D[check][VERHOEFF_P[i % 8][x]]
    return check == 0


def cpf_ok(text: str) -> bool:
    d = _digits(text)
    if len(d) != 11 or len(set(d)) == 1:
        return False
    for n in (9, 10):
        check = sum(x * (n + 1 - i) for i, x in enumerate(d[:n])) * 10 % 11 % 10
        if check != d[n]:
            return False
    return True


def ssn_ok(text: str) -> bool:
    d = "".join(ch for ch in text if ch.isdigit())
    return (len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00"
            and d[5:] != "0000" and len(set(d)) > 1)


def nino_ok(text: str) -> bool:
    prefix = text[:2].upper()
    return prefix not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")


def _always(_: str) -> bool:
    return True


# (entity, expression, check), found anywhere: the format or its check is specific enough.
ANYWHERE: tuple[tuple[str, re.Pattern[str], object], ...] = (
    # Each written with a character class first and the boundary as a lookbehind after it, so
    # the regex engine skips at C speed to where a match can start.
    ("UK_NINO", re.compile(r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-CEGHJ-PR-TW-Z])"
                           r"[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"),
     nino_ok),
    ("UK_DRIVING_LICENCE", re.compile(r"[0-9](?<=[A-Z9]{5}[0-9])(?<![A-Za-z0-9][A-Z9]{5}[0-9])"
                                      r"[0156]\d[0-3]\d\d[A-Z9]{2}\d[A-Z]{2}(?:\d{2})?"
                                      r"(?![A-Za-z0-9])"), _always),
    ("FR_NIR", re.compile(r"[12](?<![\w.][12]) ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?"
                          r"(?:\d{2}|2[AaBb]) ?\d{3} ?\d{3} ?\d{2}(?![\w])"), nir_ok),
    ("ES_DNI", re.compile(r"[0-9](?<![A-Za-z0-9][0-9])(?<![XYZxyz][0-9])(?<![XYZxyz][ -][0-9])"
                          r"\d{7}(?:[ -]?[A-Z]|[a-z])(?![A-Za-z0-9])"
                          r"|[XYZxyz](?<![A-Za-z0-9][XYZxyz])[ -]?\d{7}(?:[ -]?[A-Z]|[a-z])"
                          r"(?![A-Za-z0-9])"), dni_ok),
    ("IT_FISCAL_CODE", re.compile(r"[0-9](?<=[A-Za-z]{6}[0-9])(?<![A-Za-z0-9][A-Za-z]{6}[0-9])"
                                  r"\d[A-EHLMPR-Ta-ehlmpr-t]\d{2}[A-Za-z]\d{3}[A-Za-z]"
                                  r"(?![A-Za-z0-9])"), codice_fiscale_ok),
    ("IN_PAN", re.compile(r"[0-9](?<=[A-Z]{3}[ABCFGHLJPTK][A-Z][0-9])"
                          r"(?<![A-Za-z0-9][A-Z]{3}[ABCFGHLJPTK][A-Z][0-9])\d{3}[A-Z]"
                          r"(?![A-Za-z0-9])"), _always),
    ("BR_CPF", re.compile(r"[0-9](?<![\d.][0-9])\d{2}\.\d{3}\.\d{3}-\d{2}(?![\d])"), cpf_ok),
    ("IN_AADHAAR", re.compile(r"[2-9](?<![0-9][2-9])(?<![0-9] [2-9])\d{3} \d{4} \d{4}(?! ?\d)"),
     aadhaar_ok),
)
# Where a match begins before the first character its expression matches (the letters of a
# licence, a fiscal code or a PAN are checked by lookbehind): how far back.
LEAD = {"UK_DRIVING_LICENCE": 5, "IT_FISCAL_CODE": 6, "IN_PAN": 5}

# (entity, naming words, expression of the value, check), found only after a naming word.
_NUMBER = r"\d[\d -]{4,18}+"
_CODE = r"(?=[A-Z0-9-]{0,20}\d)[A-Z0-9][A-Z0-9-]{3,19}+"
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_DATE = (rf"(?i:\d{{1,2}}[./-]\d{{1,2}}[./-]\d{{2,4}}|\d{{4}}[./-]\d{{1,2}}[./-]\d{{1,2}}"
         rf"|\d{{1,2}}[ -]?{_MONTH}[ -]?\d{{4}}"
         rf"|\d{{1,2}}(?:st|nd|rd|th)?(?: of)? {_MONTH},? \d{{4}}"
         rf"|{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}})")
IN_CONTEXT: tuple[tuple[str, tuple[str, ...], re.Pattern[str], object], ...] = (
    ("UK_NHS", ("nhs",), re.compile(r"\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)"), nhs_ok),
    ("DE_TAX_ID", ("steuer", "idnr", "identifikationsnummer", "tax id", "tin"),
     re.compile(r"\d{2} ?\d{3} ?\d{3} ?\d{3}(?!\d)"), steuer_id_ok),
    ("NL_BSN", ("bsn", "burgerservicenummer", "sofinummer", "sofi"),
     re.compile(r"\d{4}\.?\d{2}\.?\d{3}(?!\d)|\d{3}[ .]?\d{3}[ .]?\d{3}(?!\d)"), bsn_ok),
    ("IN_AADHAAR", ("aadhaar", "aadhar", "uidai", "uid"),
     re.compile(r"\d{4}[ -]?\d{4}[ -]?\d{4}(?!\d)"), aadhaar_ok),
    ("BR_CPF", ("cpf",), re.compile(r"\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?!\d)"), cpf_ok),
    ("US_SSN", ("ssn", "social security", "ss#", "ss #"),
     re.compile(r"\d{3}[ .-]?\d{2}[ .-]?\d{4}(?!\d)"), ssn_ok),
    ("PASSPORT", ("passport", "pasaporte", "passeport", "reisepass", "passaporto",
                  "paspoort", "passaporte"), re.compile(rf"(?i:{_CODE})"), _always),
    ("DRIVING_LICENCE", ("driving licence", "driving license", "driver's license",
                         "driver license", "drivers license", "driver's licence", "dl#",
                         "licence number", "license number", "führerschein",
                         "permis de conduire", "carnet de conducir", "patente"),
     re.compile(rf"(?i:{_CODE})"), _always),
    ("DATE_OF_BIRTH", ("date of birth", "dob", "d.o.b", "born", "birthday", "birth date", "geb.",
                       "nato a", "nata a", "nata il", "née", "né", "of birth",
                       "birthdate", "geboren", "geburtsdatum", "né le", "née le", "date de "
                       "naissance", "fecha de nacimiento", "nacido el", "nacida el",
                       "data di nascita", "nato il", "nata il", "geboortedatum",
                       "data de nascimento", "nascido em", "nascida em"),
     re.compile(_DATE), _always),
    ("BANK_ACCOUNT", ("account number", "account no", "account #", "acct", "a/c",
                      "sort code", "routing number", "routing no", "aba", "kontonummer",
                      "konto", "numéro de compte", "número de cuenta", "rekeningnummer",
                      "conto corrente", "conta", "bsb", "account:"),
     re.compile(_NUMBER), _always),
    ("MEDICAL_RECORD", ("mrn", "medical record", "patient id", "patient number",
                        "patient no", "hospital number", "chart number", "health record",
                        "record number", "hospital no", "fallnummer", "patientennummer",
                        "patiëntnummer", "patientnummer", "uhid", "cartella clinica",
                        "numéro de dossier", "historia clínica", "prontuário", "nhi"),
     re.compile(rf"(?i:{_CODE})"), _always),
    ("CUSTOMER_ID", ("customer id", "customer number", "customer no", "customer #",
                     "client id", "client number", "member id", "membership number",
                     "member number", "policy number", "policy no", "account id",
                     "employee id", "employee number", "user id", "subscriber id",
                     "customer_id", "client_id", "member_id", "kundennummer", "kunden-nr",
                     "numer klienta", "numéro client", "numéro de client", "número de cliente",
                     "klantnummer", "codice cliente", "loyalty number", "partner number"),
     re.compile(rf"(?i:{_CODE})"), _always),
)
IDENTIFIERS = frozenset({e for e, *_ in ANYWHERE} | {e for e, *_ in IN_CONTEXT})
# Between a naming word and its value: "no.", "number", "#", ":", "is", "of" and spaces.
# Between a naming word and its value: separators and quotes ("customer_id":"C-1"), and up to
# a few words ("SSN as", "no. of the patient", "nata a Torino il", "do titular"); bounded, and
# never a word in capitals, which is where a code starts.
GAP = re.compile(r"(?:[\s:#=.)(/\"'-]++|(?i:id|no|nr|num|nº)\b|[a-zà-ÿ]{1,12}+\b"
                 r"|[A-Z][a-zà-ÿ]{1,15}+\b){0,8}+")


def anywhere(text: str) -> Iterator[Match]:
    for entity, regex, check in ANYWHERE:
        lead = LEAD.get(entity, 0)
        for m in regex.finditer(text):
            start = m.start() - lead
            if check(text[start:m.end()]):  # type: ignore[operator]
                yield start, m.end(), entity, 0.9


def in_context(text: str) -> Iterator[Match]:
    """Values right after a word that names them ("DOB: 12/03/1985", "MRN 00123456"): each
    naming word found by str.find, one bounded match there."""
    lowered = lower(text)
    for entity, words, regex, check in IN_CONTEXT:
        for word in words:
            if lacks_first_word(lowered, word):
                continue
            at = lowered.find(word)
            while at != -1:
                after = at + len(word)
                if (at == 0 or not lowered[at - 1].isalnum()) and (
                        after == len(text) or not lowered[after].isalnum() or
                        not word[-1].isalnum()):
                    yield from _value(text, after, entity, regex, check)
                at = lowered.find(word, at + 1)


def _value(text: str, after: int, entity: str, regex: re.Pattern[str], check: object
           ) -> Iterator[Match]:
    gap = GAP.match(text, after)
    value_at = gap.end() if gap else after
    if value_at - after <= CONTEXT_WINDOW and (m := regex.match(text, value_at)):
        value = m.group().rstrip(" -")
        if check(value):  # type: ignore[operator]
            yield m.start(), m.start() + len(value), entity, 0.85
