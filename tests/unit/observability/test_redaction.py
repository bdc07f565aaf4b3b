"""What the logging chain actually writes, rendered, at DEBUG."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.observability.logging import configure_logging, get_logger, start_request_fields
from tests.logs import use_suite_logging

EMAIL = "leak.canary@example.org"
CARD = "4111 1111 1111 1111"
KEY = "sk-proj-Zx8Qw3Er5Ty7Ui9Op1As2Df4Gh6Jk8Lz0Xc"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", correlation_key=b"k" * 32, stream=stream)
    yield stream
    use_suite_logging()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_values_by_pattern_and_keys_by_name(written: io.StringIO) -> None:
    log = get_logger("veil.test")
    log.debug("note", detail=f"user {EMAIL} paid with {CARD}", authorization=f"Bearer {KEY}",
              nested={"prompt": "hello", "ok": f"key {KEY}"}, items=[EMAIL, 3])
    text = written.getvalue()
    for value in (EMAIL, CARD, KEY, "hello"):
        assert value not in text
    line = lines(written)[0]
    assert line["detail"].startswith("user [REDACTED:EMAIL:len=23:h=")  # type: ignore[union-attr]
    assert line["authorization"].startswith("[REDACTED:KEY:len=")  # type: ignore[union-attr]
    assert line["nested"]["prompt"].startswith("[REDACTED:KEY:")  # type: ignore[index]
    assert "[REDACTED:SECRET:" in line["nested"]["ok"]  # type: ignore[index]


def test_correlation_hash_is_stable(written: io.StringIO) -> None:
    log = get_logger("veil.test")
    log.info("a", who=EMAIL)
    log.info("b", who=EMAIL)
    first, second = lines(written)
    assert first["who"] == second["who"]


def test_exceptions_keep_type_and_frames_only(written: io.StringIO) -> None:
    log = get_logger("veil.test")
    try:
        json.loads('{"card": "' + CARD + '", broken')
    except ValueError:
        log.error("parse_failed", exc_info=True)
    line = lines(written)[0]
    assert CARD not in written.getvalue()
    assert line["exception"]["type"] == "JSONDecodeError"  # type: ignore[index]
    assert any("test_redaction.py" in f for f in line["exception"]["frames"])  # type: ignore[index]


def test_stdlib_loggers_go_through_the_same_chain(written: io.StringIO) -> None:
    logging.getLogger("aiohttp.server").warning("bad request from %s", EMAIL)
    try:
        raise RuntimeError(f"upstream said {KEY}")
    except RuntimeError:
        logging.getLogger("asyncio").exception("task failed with %s", CARD)
    text = written.getvalue()
    for value in (EMAIL, KEY, CARD):
        assert value not in text
    first, second = lines(written)
    assert first["logger_name"] == "aiohttp.server"
    assert second["exception"]["type"] == "RuntimeError"  # type: ignore[index]


def test_bound_context_is_redacted_too(written: io.StringIO) -> None:
    # (request_id is vetted where it is accepted: test_secret_looking_request_id_is_replaced)
    start_request_fields(session=KEY)
    try:
        get_logger("veil.test").info("x")
    finally:
        start_request_fields()
    assert KEY not in written.getvalue()


def test_our_event_names_are_not_scanned_but_foreign_messages_are(written: io.StringIO) -> None:
    get_logger("veil.test").info("request", model="m")
    logging.getLogger("presidio-analyzer").warning(f"saw {EMAIL}")
    ours, foreign = lines(written)
    assert ours["event"] == "request"
    assert EMAIL not in foreign["event"]  # type: ignore[operator]


def test_own_listen_address_is_shown_but_addresses_in_other_fields_are_not(
        written: io.StringIO) -> None:
    from gateway.server import listen_address  # noqa: PLC0415

    log = get_logger("veil.server")
    log.info("listening", listen=listen_address("10.1.2.3", 8080), pid=1, config="config.yaml")
    log.info("listening", listen=listen_address("::1", 9000))
    log.info("request", client="10.1.2.3", detail="from 10.1.2.3")
    own, ipv6, other = lines(written)
    assert own["listen"] == "10.1.2.3:8080"
    assert ipv6["listen"] == "[::1]:9000"
    assert "10.1.2.3" not in json.dumps(other)
    assert str(other["client"]).startswith("[REDACTED:IP_ADDRESS:")
