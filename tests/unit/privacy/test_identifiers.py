"""National identifiers, context-named numbers and street addresses from the pattern tier:
each format found where it should be, its checksum refusing a one-character change, and
ordinary prose left alone."""

from __future__ import annotations

import pytest

from gateway.privacy.patterns import PatternDetector
from tests.unit.privacy.findings import found

VALID = [
    ("NI number AB 12 34 56 C on file", "AB 12 34 56 C", "UK_NINO"),
    ("NHS number 943 476 5919.", "943 476 5919", "UK_NHS"),
    ("Steuer-ID: 86095742719", "86095742719", "DE_TAX_ID"),
    ("NIR 1 85 05 78 006 084 91", "1 85 05 78 006 084 91", "FR_NIR"),
    ("mon numéro 269029934173285", "269029934173285", "FR_NIR"),
    ("BSN 111222333", "111222333", "NL_BSN"),
    ("DNI 12345678Z", "12345678Z", "ES_DNI"),
    ("NIE X1234567L", "X1234567L", "ES_DNI"),
    ("codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S", "IT_FISCAL_CODE"),
    ("Aadhaar 2345 6789 0124", "2345 6789 0124", "IN_AADHAAR"),
    ("PAN ABCPE1234F", "ABCPE1234F", "IN_PAN"),
    ("CPF 123.456.789-09", "123.456.789-09", "BR_CPF"),
    ("cpf 12345678909", "12345678909", "BR_CPF"),
    ("SSN 123456789", "123456789", "US_SSN"),
    ("passport no. 533401372", "533401372", "PASSPORT"),
    ("Reisepass Nr. C01X00T47", "C01X00T47", "PASSPORT"),
    ("licence MORGA753116SM9IJ", "MORGA753116SM9IJ", "UK_DRIVING_LICENCE"),
    ("driver's license # D1234-5678-9012", "D1234-5678-9012", "DRIVING_LICENCE"),
    ("DOB: 12/03/1985", "12/03/1985", "DATE_OF_BIRTH"),
    ("born on the 3rd of March 1985", "3rd of March 1985", "DATE_OF_BIRTH"),
    ("date de naissance : 1985-03-12", "1985-03-12", "DATE_OF_BIRTH"),
    ("account number 12345678", "12345678", "BANK_ACCOUNT"),
    ("sort code 12-34-56", "12-34-56", "BANK_ACCOUNT"),
    ("MRN: 00123456", "00123456", "MEDICAL_RECORD"),
    ("customer id CU-88812", "CU-88812", "CUSTOMER_ID"),
]


@pytest.mark.parametrize(("text", "value", "entity"), VALID, ids=[v[2] + ":" + v[1] for v in VALID])
def test_identifier_found(text: str, value: str, entity: str) -> None:
    assert (value, entity) in found(text)


@pytest.mark.parametrize(("text", "entity"), [
    ("NHS number 943 476 5918", "UK_NHS"),
    ("Steuer-ID: 86095742718", "DE_TAX_ID"),
    ("NIR 1 85 05 78 006 084 92", "FR_NIR"),
    ("BSN 111222334", "NL_BSN"),
    ("DNI 12345678A", "ES_DNI"),
    ("codice fiscale RSSMRA85T10A562T", "IT_FISCAL_CODE"),
    ("Aadhaar 2345 6789 0125", "IN_AADHAAR"),
    ("CPF 123.456.789-08", "BR_CPF"),
    ("NI number GB 12 34 56 C", "UK_NINO"),
])
def test_checksum_or_rule_refuses_a_changed_character(text: str, entity: str) -> None:
    assert entity not in [e for _, e in found(text)]


def test_weak_checksums_need_their_naming_word() -> None:
    # 111222333 passes the 11-proof, 86095742719 the ISO 7064 check: bare, they are just numbers
    entities = {e for _, e in found("Order 111222333 shipped; invoice 86095742719 paid.")}
    assert not entities & {"NL_BSN", "DE_TAX_ID"}


@pytest.mark.parametrize(("text", "address"), [
    ("I live at 221B Baker Street, London NW1 6XE now.", "221B Baker Street, London NW1 6XE"),
    ("Ship to 1600 Pennsylvania Ave NW, Suite 200, Washington, DC 20500.",
     "1600 Pennsylvania Ave NW, Suite 200, Washington, DC 20500"),
    ("Mi dirección: Calle Mayor 5, 28013 Madrid.", "Calle Mayor 5, 28013 Madrid"),
    ("Wohnhaft in der Hauptstraße 5, 10115 Berlin.", "Hauptstraße 5, 10115 Berlin"),
    ("Adres: Keizersgracht 123, 1015 CJ Amsterdam", "Keizersgracht 123, 1015 CJ Amsterdam"),
    ("Envoyez à 12 bis rue de la Paix, 75002 Paris.", "12 bis rue de la Paix, 75002 Paris"),
    ("Via Roma 10, 00184 Roma", "Via Roma 10, 00184 Roma"),
    ("Rua Augusta, 1500 - São Paulo, 01310-100", "Rua Augusta, 1500 - São Paulo, 01310-100"),
    ("Deliver to 12, MG Road, Bengaluru 560001", "12, MG Road, Bengaluru 560001"),
    ("1-2-3 Jingumae, Shibuya-ku, Tokyo 150-0001", "1-2-3 Jingumae, Shibuya-ku, Tokyo 150-0001"),
    ("Postcode: SW1A 2AA", "SW1A 2AA"),
])
def test_street_address_found_whole(text: str, address: str) -> None:
    assert (address, "ADDRESS") in found(text)


@pytest.mark.parametrize("text", [
    "We shipped 12 units to Berlin in 2024 and 10000 Euros.",
    "Take the 5 Main points from page 12 and the 3 Road maps.",
    "Version 10 of Spring 2024 via email 10 times",
    "Meet at 10 am, room 3, then lunch for 20 people.",
])
def test_prose_with_numbers_is_not_an_address(text: str) -> None:
    assert [e for _, e in found(text)] == []


@pytest.mark.parametrize(("text", "value", "entity"), [
    ("请联系john@example.com谢谢", "john@example.com", "EMAIL"),
    ("card 4111.1111.1111.1111", "4111.1111.1111.1111", "CREDIT_CARD"),
    ("card 4111/1111/1111/1111", "4111/1111/1111/1111", "CREDIT_CARD"),
    ("card 4111  1111  1111  1111", "4111  1111  1111  1111", "CREDIT_CARD"),
    ("card 4111\u00a01111\u00a01111\u00a01111", "4111\u00a01111\u00a01111\u00a01111",
     "CREDIT_CARD"),
    ("numer konta 61 1090 1014 0000 0712 1981 2874 dziękuję",
     "61 1090 1014 0000 0712 1981 2874", "IBAN"),
    ("przelew na PL61109010140000071219812874.", "PL61109010140000071219812874", "IBAN"),
])
def test_formats_the_pattern_tier_used_to_miss(text: str, value: str, entity: str) -> None:
    assert (value, entity) in found(text)


def test_policies_know_every_type_the_builtin_detectors_find() -> None:
    from gateway.policy.schema import BUILTIN_ENTITIES  # noqa: PLC0415
    from gateway.privacy.presidio import PresidioDetector  # noqa: PLC0415

    assert PatternDetector.entities | PresidioDetector.entities == BUILTIN_ENTITIES


@pytest.mark.parametrize(("text", "names"), [
    ("my name is borna jerković but everyone calls me B", [("borna jerković", "PERSON")]),
    ("the file name is config.yaml", []),
    ("My name is not important", []),
])
def test_lowercase_names_after_my_name_is(text: str, names: list[tuple[str, str]]) -> None:
    assert [f for f in found(text) if f[1] == "PERSON"] == names



@pytest.mark.parametrize(("text", "secret"), [
    ("REDIS_URL=redis://:q7VmZ2pL9sWx@cache:6379", "q7VmZ2pL9sWx"),
    ('SMTP_PASS = "vX4#nq8LzR2w"', "vX4#nq8LzR2w"),
    ("DB_PASS=abcdefghij", "abcdefghij"),
    ("Passwort Kessler!2024bau bitte", "Kessler!2024bau"),
    ("mot de passe : Soleil#2024", "Soleil#2024"),
])
def test_more_ways_to_write_a_password(text: str, secret: str) -> None:
    assert (secret, "SECRET") in found(text)


@pytest.mark.parametrize("text", ["the password protection is on", "you pass: everything fine"])
def test_password_words_in_prose_are_not_secrets(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(("text", "address"), [
    ("Flat 504, Sai Krupa Apartments, 14th Cross Road, Indiranagar, Bengaluru 560038 ok",
     "Flat 504, Sai Krupa Apartments, 14th Cross Road, Indiranagar, Bengaluru 560038"),
    ("Plot 22, Road No. 12, Banjara Hills, Hyderabad 500034.",
     "Plot 22, Road No. 12, Banjara Hills, Hyderabad 500034"),
    ("Office: 21 Teheran-ro 52-gil, Gangnam-gu, Seoul 06212",
     "21 Teheran-ro 52-gil, Gangnam-gu, Seoul 06212"),
    ("上海市浦东新区世纪大道88号26楼", "上海市浦东新区世纪大道88号26楼"),
    ("Am Wiesengrund 7, 24113 Kiel", "Am Wiesengrund 7, 24113 Kiel"),
    ("ul. Mokotowska 41/7, 00-551 Warszawa", "ul. Mokotowska 41/7, 00-551 Warszawa"),
    ("Mariahilfer Straße 101/14, 1060 Wien", "Mariahilfer Straße 101/14, 1060 Wien"),
    ("Rue Haute 139, 1000 Bruxelles", "Rue Haute 139, 1000 Bruxelles"),
    ("Avenida de la Constitución 34, 2º izquierda, 41004 Sevilla",
     "Avenida de la Constitución 34, 2º izquierda, 41004 Sevilla"),
    ("Rua Augusta, 1508, apto 72, Consolação, São Paulo - SP, 01304-001",
     "Rua Augusta, 1508, apto 72, Consolação, São Paulo - SP, 01304-001"),
    ("2210 NW 7th Street, Apt 5, Miami, FL 33125", "2210 NW 7th Street, Apt 5, Miami, FL 33125"),
])
def test_more_address_formats_found_whole(text: str, address: str) -> None:
    assert (address, "ADDRESS") in found(text)
