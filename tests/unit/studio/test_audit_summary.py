"""The audit view's filters, pages and chart buckets, on rows built from plain records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.errors import StudioRefused
from gateway.studio.audit_summary import (
    MAX_BUCKETS,
    MAX_KEYS,
    OTHER,
    Filters,
    Row,
    floor,
    page,
    parse_cursor,
    parse_limit,
    refuse_unknown,
    row_from,
    summarize,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def record(seq: int, when: datetime, **facts: Any) -> dict[str, Any]:
    return {"seq": seq, "time": when.isoformat(timespec="milliseconds"), "tenant": "acme",
            "rule": "default", "decision": "forwarded", "data_classes": [], "entities": {},
            "backend": "b1", "status": 200, "latency_ms": {"total": 12.5}, **facts}


def rows(*records: dict[str, Any], chain: str = "audit.jsonl") -> list[Row]:
    made = [row_from(chain, r) for r in records]
    assert all(made)
    return [r for r in made if r is not None]


def test_a_row_keeps_only_known_facts_of_the_right_type() -> None:
    row = row_from("audit.jsonl", record(
        3, T0, prompt="my card is 4111 1111 1111 1111", tenant=["not", "a", "name"],
        entities={"EMAIL_ADDRESS": 2, "CREDIT_CARD": "1", "NEG": -1, "BOOL": True},
        data_classes=["pii", 7], latency_ms="fast"))
    assert row is not None
    shown = row.as_json()
    assert "prompt" not in shown
    assert "4111" not in str(shown)
    assert shown["tenant"] is None
    assert shown["entities"] == {"EMAIL_ADDRESS": 2}
    assert shown["data_classes"] == ["pii"]
    assert shown["latency_ms"] is None
    assert shown["time"] == "2026-03-02T09:00:00.000Z"


@pytest.mark.parametrize("garbled", [
    None, [], "text", {"time": T0.isoformat()}, {"seq": "3", "time": T0.isoformat()},
    {"seq": True, "time": T0.isoformat()}, {"seq": 1, "time": "yesterday"}, {"seq": 1},
])
def test_a_record_without_a_seq_or_time_is_no_row(garbled: object) -> None:
    assert row_from("audit.jsonl", garbled) is None


def test_filters_match_names_exactly_and_times_inclusively() -> None:
    a = rows(record(0, T0, tenant="acme", data_classes=["pii"]),
             record(1, T0 + timedelta(minutes=5), tenant="globex", rule="cards",
                    decision="blocked", backend="b2"))
    assert [r.seq for r in a if Filters(tenant="globex").keeps(r)] == [1]
    assert [r.seq for r in a if Filters(data_class="pii").keeps(r)] == [0]
    assert [r.seq for r in a if Filters(rule="cards", outcome="blocked").keeps(r)] == [1]
    assert [r.seq for r in a if Filters(backend="b1").keeps(r)] == [0]
    assert [r.seq for r in a if Filters(since=T0 + timedelta(minutes=5)).keeps(r)] == [1]
    assert [r.seq for r in a if Filters(until=T0).keeps(r)] == [0]
    assert [r.seq for r in a if Filters(tenant="acm").keeps(r)] == []


def test_filters_parse_times_as_utc_unless_they_name_an_offset() -> None:
    parsed = Filters.parse({"since": "2026-03-02T09:00", "until": "2026-03-02T10:00:00Z",
                            "tenant": "", "outcome": "blocked"})
    assert parsed.since == T0
    assert parsed.until == T0 + timedelta(hours=1)
    assert parsed.tenant is None
    assert parsed.outcome == "blocked"
    assert Filters.parse({"since": "2026-03-02T11:00+02:00"}).since == T0


@pytest.mark.parametrize(("query", "parameter"), [
    ({"since": "last tuesday"}, "since"),
    ({"until": "2026-13-01T00:00"}, "until"),
    ({"outcome": "<script>"}, "outcome"),
    ({"since": "2026-03-02T10:00", "until": "2026-03-02T09:00"}, "since"),
])
def test_a_bad_filter_is_refused(query: dict[str, str], parameter: str) -> None:
    with pytest.raises(StudioRefused) as refused:
        Filters.parse(query)
    assert (refused.value.status, refused.value.code) == (400, "invalid_parameter")
    assert refused.value.extra == {"param": parameter}


def test_unknown_parameters_limits_and_cursors_are_refused() -> None:
    with pytest.raises(StudioRefused, match="unknown parameter 'tennant'"):
        refuse_unknown({"tennant": "acme"}, ("tenant",))
    for bad in ("0", "501", "-1", "ten", "1e3", "\N{SUPERSCRIPT TWO}", " 5"):
        with pytest.raises(StudioRefused):
            parse_limit(bad)
    assert parse_limit(None) == 50
    assert parse_limit("500") == 500
    for bad in ("garbage!", "WzEsMiwzXQ", "bm90IGpzb24"):
        with pytest.raises(StudioRefused):
            parse_cursor(bad)


def test_pages_walk_every_row_once_newest_first_across_chains() -> None:
    everything = [*rows(*(record(i, T0 + timedelta(seconds=i // 2)) for i in range(23))),
                  *rows(*(record(i, T0 + timedelta(seconds=i // 3)) for i in range(17)),
                        chain="audit.r2.jsonl")]
    seen: list[tuple[datetime, str, int]] = []
    cursor = None
    while True:
        shown = page(iter(everything), Filters(), 7, cursor)
        seen += [r.position for r in shown.rows]
        if shown.next_cursor is None:
            break
        cursor = parse_cursor(shown.next_cursor)
    assert len(seen) == 40 == len(set(seen))
    assert seen == sorted(seen, reverse=True)


def test_a_page_holds_the_newest_matching_rows_and_says_when_there_are_more() -> None:
    everything = rows(*(record(i, T0 + timedelta(minutes=i),
                               tenant="acme" if i % 2 else "globex") for i in range(10)))
    shown = page(everything, Filters(tenant="acme"), 3)
    assert [r.seq for r in shown.rows] == [9, 7, 5]
    assert shown.next_cursor is not None
    assert page(everything, Filters(tenant="acme"), 5).next_cursor is None


@pytest.mark.parametrize(("span", "bucket", "bars"), [
    (timedelta(minutes=10), "minute", 11),
    (timedelta(hours=2), "minute", 121),
    (timedelta(hours=30), "hour", 31),
    (timedelta(days=40), "day", 41),
    (timedelta(days=400), "week", 58),
])
def test_auto_buckets_follow_the_span(span: timedelta, bucket: str, bars: int) -> None:
    summary = summarize(rows(record(0, T0), record(1, T0 + span)), Filters()).as_json()
    assert summary["bucket"] == bucket
    assert len(summary["series"]) == bars
    assert sum(b["requests"] for b in summary["series"]) == 2


def test_series_count_outcomes_entities_and_blocks_by_rule_per_bucket() -> None:
    summary = summarize(rows(
        record(0, T0, entities={"EMAIL_ADDRESS": 2}),
        record(1, T0 + timedelta(seconds=30), decision="blocked", rule="no-cards",
               entities={"CREDIT_CARD": 1}),
        record(2, T0 + timedelta(minutes=2), decision="blocked", rule="no-cards"),
        record(3, T0 + timedelta(minutes=2), decision="refused", rule="rate_limited",
               tenant="globex"),
    ), Filters(tenant="acme")).as_json()
    assert summary["matched"] == 3
    assert [b["start"] for b in summary["series"]] == [
        "2026-03-02T09:00:00.000Z", "2026-03-02T09:01:00.000Z", "2026-03-02T09:02:00.000Z"]
    assert [b["outcomes"]["blocked"] for b in summary["series"]] == [1, 0, 1]
    assert [b["outcomes"]["forwarded"] for b in summary["series"]] == [1, 0, 0]
    assert summary["series"][0]["entities"] == {"EMAIL_ADDRESS": 2, "CREDIT_CARD": 1}
    assert summary["series"][1]["entities"] == {"EMAIL_ADDRESS": 0, "CREDIT_CARD": 0}
    assert summary["blocks_by_rule"] == [{"rule": "no-cards", "count": 2}]
    # the dropdowns offer every value, not only the filtered ones
    assert summary["options"]["tenants"] == ["acme", "globex"]
    assert summary["options"]["rules"] == ["default", "no-cards", "rate_limited"]
    assert summary["first_time"] == "2026-03-02T09:00:00.000Z"


def test_many_entity_types_fold_into_other() -> None:
    entities = {f"TYPE_{i:02}": i + 1 for i in range(12)}
    summary = summarize(rows(record(0, T0, entities=entities)), Filters()).as_json()
    assert summary["entity_types"][-1] == OTHER
    assert len(summary["entity_types"]) == 9
    assert summary["series"][0]["entities"][OTHER] == sum(range(1, 5))
    assert summary["series"][0]["entities"]["TYPE_11"] == 12


def test_a_named_bucket_too_fine_for_the_span_is_refused() -> None:
    summary = summarize(rows(record(0, T0), record(1, T0 + timedelta(days=30))), Filters())
    assert summary.as_json("day")["bucket"] == "day"
    with pytest.raises(StudioRefused, match="more than"):
        summary.as_json("minute")
    with pytest.raises(StudioRefused, match="bucket must be"):
        summary.as_json("fortnight")


def test_buckets_and_tallies_stay_bounded() -> None:
    many = rows(*(record(i, T0 + timedelta(minutes=i), rule=f"rule-{i}", decision="blocked")
                  for i in range(MAX_BUCKETS + 50)))
    summary = summarize(many, Filters())
    assert summary.widths["minute"].overflowed
    assert summary.widths["minute"].outcomes == {}
    assert len(summary.widths["hour"].outcomes) == 18
    assert len(summary.options["rules"]) == MAX_KEYS + 1  # the rest under OTHER
    assert summary.as_json()["bucket"] == "hour"


def test_an_empty_selection_has_no_series() -> None:
    summary = summarize(rows(record(0, T0)), Filters(tenant="nobody")).as_json()
    assert summary["matched"] == 0
    assert summary["series"] == []
    assert summary["bucket"] == "minute"


@pytest.mark.parametrize(("width", "start"), [
    ("minute", datetime(2026, 3, 8, 23, 59, tzinfo=UTC)),
    ("hour", datetime(2026, 3, 8, 23, 0, tzinfo=UTC)),
    ("day", datetime(2026, 3, 8, tzinfo=UTC)),
    ("week", datetime(2026, 3, 2, tzinfo=UTC)),  # the Monday before that Sunday
])
def test_a_bucket_starts_on_its_boundary_in_utc(width: str, start: datetime) -> None:
    sunday_night = datetime(2026, 3, 8, 23, 59, 58, 900_000, tzinfo=UTC)
    assert floor(sunday_night.timestamp(), width) == start.timestamp()
