"""The audit view's arithmetic, apart from files and HTTP: what a row of the table may show,
which rows a filter keeps, one page of them newest first, and the charts' series.

A row keeps only the record's known facts, each checked for its type (names, types, counts),
so a garbled or hostile line shows as nothing, or as "unreadable", never as markup or a crash.
Every pass is one scan with bounded memory: a page keeps `limit` rows, the series keep at most
`MAX_BUCKETS` buckets per width, and every tally at most `MAX_KEYS` names.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.errors import StudioRefused

OUTCOMES = ("forwarded", "blocked", "refused", "failed")
BUCKETS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}  # s
MONDAY = 4 * 86400  # the epoch fell on a Thursday: weeks start this much later
AUTO_BUCKETS = 180  # "auto" picks the finest width that draws the span in this many bars
MAX_BUCKETS = 1000  # a width asked for by name may draw at most this many
MAX_KEYS = 500  # distinct names per tally; the rest count under OTHER
OTHER = "(other)"
TOP_ENTITY_TYPES = 8  # lines on the entity chart; the rest are summed as OTHER
TOP_RULES = 20
MAX_NAME = 200  # characters of a name kept (a name from config is far shorter)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
FILTERS = ("tenant", "rule", "data_class", "backend", "outcome", "since", "until")


@dataclass(frozen=True)
class Row:
    chain: str
    seq: int
    time: datetime
    request_id: str | None
    tenant: str | None
    key: str | None
    route: str | None
    model: str | None
    outcome: str | None
    rule: str | None
    data_classes: tuple[str, ...]
    entities: Mapping[str, int]
    backend: str | None
    status: int | None
    latency_ms: float | None
    failed_open: tuple[str, ...]

    @property
    def position(self) -> tuple[datetime, str, int]:
        """Where the row sorts, newest last: time, then chain and seq for equal times."""
        return self.time, self.chain, self.seq

    def as_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "time": _iso(self.time),
                "request_id": self.request_id, "tenant": self.tenant, "key": self.key,
                "route": self.route, "model": self.model, "outcome": self.outcome,
                "rule": self.rule, "data_classes": list(self.data_classes),
                "entities": dict(self.entities), "backend": self.backend,
                "status": self.status, "latency_ms": self.latency_ms,
                "failed_open": list(self.failed_open)}


def row_from(chain: str, record: object) -> Row | None:
    """The row a parsed record shows, or None when it lacks a `seq` or a readable `time`."""
    if not isinstance(record, dict):
        return None
    seq, when = record.get("seq"), _time(record.get("time"))
    if not isinstance(seq, int) or isinstance(seq, bool) or when is None:
        return None
    latency = record.get("latency_ms")
    total = latency.get("total") if isinstance(latency, dict) else None
    return Row(
        chain=chain, seq=seq, time=when, request_id=_name(record.get("request_id")),
        tenant=_name(record.get("tenant")), key=_name(record.get("key")),
        route=_name(record.get("route")), model=_name(record.get("model")),
        outcome=_name(record.get("decision")), rule=_name(record.get("rule")),
        data_classes=_names(record.get("data_classes")),
        entities=_counts(record.get("entities")), backend=_name(record.get("backend")),
        status=_int(record.get("status")),
        latency_ms=float(total) if isinstance(total, int | float) and
        not isinstance(total, bool) else None,
        failed_open=_names(record.get("failed_open")))


def _name(value: object) -> str | None:
    return value[:MAX_NAME] if isinstance(value, str) else None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v[:MAX_NAME] for v in value[:MAX_KEYS] if isinstance(v, str))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {k[:MAX_NAME]: v for k, v in list(value.items())[:MAX_KEYS]
            if isinstance(k, str) and _int(v) is not None and v >= 0}


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Filters:
    """Which rows to keep: each name must match exactly; times are inclusive, UTC when naive."""

    tenant: str | None = None
    rule: str | None = None
    data_class: str | None = None
    backend: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        outcome = query.get("outcome") or None
        if outcome not in (None, *OUTCOMES):
            raise bad_query("outcome", f"outcome must be one of {', '.join(OUTCOMES)}")
        since, until = _bound(query, "since"), _bound(query, "until")
        if since and until and since > until:
            raise bad_query("since", "since is after until")
        return cls(tenant=query.get("tenant") or None, rule=query.get("rule") or None,
                   data_class=query.get("data_class") or None,
                   backend=query.get("backend") or None, outcome=outcome, since=since,
                   until=until)

    def keeps(self, row: Row) -> bool:
        return ((self.tenant is None or row.tenant == self.tenant)
                and (self.rule is None or row.rule == self.rule)
                and (self.data_class is None or self.data_class in row.data_classes)
                and (self.backend is None or row.backend == self.backend)
                and (self.outcome is None or row.outcome == self.outcome)
                and (self.since is None or row.time >= self.since)
                and (self.until is None or row.time <= self.until))


def _bound(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    when = _time(raw.replace("Z", "+00:00"))
    if when is None:
        raise bad_query(name, f"{name} must be an ISO 8601 date and time, e.g. "
                                  "2026-01-31T09:30 (UTC unless it names an offset)")
    return when


def bad_query(parameter: str, message: str) -> StudioRefused:
    """A query the view refuses: 400, naming the parameter (`param`, as OpenAI's errors do)."""
    return StudioRefused(400, "invalid_parameter", message, param=parameter)


def refuse_unknown(query: Mapping[str, str], allowed: Iterable[str]) -> None:
    """A misspelt filter would silently show everything: refuse it instead."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise bad_query(unknown[0], f"unknown parameter {unknown[0]!r}")


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_query("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def cursor_for(row: Row) -> str:
    """Opaque to the page: the position of the last row shown; the next page starts below."""
    raw = orjson.dumps([_iso(row.time), row.chain, row.seq])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(raw: str | None) -> tuple[datetime, str, int] | None:
    if not raw:
        return None
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        decoded = None
    if isinstance(decoded, list) and len(decoded) == 3:
        when, chain, seq = _time(decoded[0]), decoded[1], decoded[2]
        if when is not None and isinstance(chain, str) and _int(seq) is not None:
            return when, chain, seq
    raise bad_query("cursor", "cursor is not one this view handed out")


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: str | None


def page(rows: Iterable[Row], filters: Filters, limit: int,
         cursor: tuple[datetime, str, int] | None = None) -> Page:
    """The `limit` newest rows the filters keep, older than `cursor`; memory for limit + 1."""
    kept = (r for r in rows if filters.keeps(r) and (cursor is None or r.position < cursor))
    newest = heapq.nlargest(limit + 1, kept, key=lambda r: r.position)
    shown = newest[:limit]
    return Page(shown, cursor_for(shown[-1]) if len(newest) > limit else None)


def _tally(counter: Counter[str], name: str, n: int = 1) -> None:
    counter[name if name in counter or len(counter) < MAX_KEYS else OTHER] += n


def floor(epoch: float, width: str) -> int:
    """The start (epoch seconds) of the bucket a moment falls in; weeks start on Monday, UTC.
    Plain integers: this runs once per record and width."""
    size = BUCKETS[width]
    offset = MONDAY if width == "week" else 0
    return int((epoch - offset) // size) * size + offset


@dataclass
class Buckets:
    """One width's buckets, sparse while counting; dropped once it holds more than
    MAX_BUCKETS (then no span it covers could be drawn at that width)."""

    width: str
    outcomes: dict[int, Counter[str]] = field(default_factory=dict)
    entities: dict[int, Counter[str]] = field(default_factory=dict)
    overflowed: bool = False

    def add(self, row: Row, epoch: float) -> None:
        if self.overflowed:
            return
        start = floor(epoch, self.width)
        outcomes = self.outcomes.get(start)
        if outcomes is None:
            if len(self.outcomes) >= MAX_BUCKETS:
                self.overflowed, self.outcomes, self.entities = True, {}, {}
                return
            outcomes = self.outcomes[start] = Counter()
            self.entities[start] = Counter()
        _tally(outcomes, row.outcome or "unknown")
        found = self.entities[start]
        for kind, n in row.entities.items():
            _tally(found, kind, n)


@dataclass
class Summary:
    """The charts and the filter choices, from one pass over every row."""

    matched: int = 0
    first: datetime | None = None
    last: datetime | None = None
    blocks_by_rule: Counter[str] = field(default_factory=Counter)
    entity_totals: Counter[str] = field(default_factory=Counter)
    widths: dict[str, Buckets] = field(
        default_factory=lambda: {w: Buckets(w) for w in BUCKETS})
    options: dict[str, Counter[str]] = field(default_factory=lambda: {
        k: Counter() for k in ("tenants", "rules", "data_classes", "backends", "outcomes")})

    def add(self, row: Row, kept: bool) -> None:
        """Every row offers its names to the dropdowns; only kept rows are counted."""
        for option, names in (("tenants", [row.tenant]), ("rules", [row.rule]),
                              ("data_classes", row.data_classes), ("backends", [row.backend]),
                              ("outcomes", [row.outcome])):
            for name in names:
                if name is not None:
                    _tally(self.options[option], name)
        if not kept:
            return
        self.matched += 1
        self.first = row.time if self.first is None else min(self.first, row.time)
        self.last = row.time if self.last is None else max(self.last, row.time)
        if row.outcome == "blocked":
            _tally(self.blocks_by_rule, row.rule or "unknown")
        for kind, n in row.entities.items():
            _tally(self.entity_totals, kind, n)
        epoch = row.time.timestamp()
        for buckets in self.widths.values():
            buckets.add(row, epoch)

    def width(self, asked: str) -> str:
        """The bucket width: the one asked for, or for "auto" the finest that draws the span
        in AUTO_BUCKETS bars."""
        if asked == "auto":
            for name in BUCKETS:
                if self._bars(name) <= AUTO_BUCKETS:
                    return name
            if self._bars("week") <= MAX_BUCKETS:
                return "week"
            raise bad_query("since", f"these records span more than {MAX_BUCKETS} "
                                         "weeks: narrow the time range")
        if asked not in BUCKETS:
            raise bad_query("bucket", f"bucket must be auto or one of {', '.join(BUCKETS)}")
        if self.widths[asked].overflowed or self._bars(asked) > MAX_BUCKETS:
            raise bad_query("bucket", f"{asked} buckets would draw more than "
                                          f"{MAX_BUCKETS} bars for this span: choose a wider "
                                          "one or fewer days")
        return asked

    def _bars(self, width: str) -> int:
        if self.first is None or self.last is None:
            return 0
        if self.widths[width].overflowed:
            return MAX_BUCKETS + 1
        span = floor(self.last.timestamp(), width) - floor(self.first.timestamp(), width)
        return span // BUCKETS[width] + 1

    def as_json(self, asked: str = "auto") -> dict[str, Any]:
        width = self.width(asked)
        top = [k for k, _ in self.entity_totals.most_common(TOP_ENTITY_TYPES)]
        folded = len(self.entity_totals) > len(top)
        series = []
        buckets = self.widths[width]
        start = floor(self.first.timestamp(), width) if self.first else None
        end = self.last.timestamp() if self.last else 0
        while start is not None and start <= end:
            outcomes = buckets.outcomes.get(start, Counter())
            found = buckets.entities.get(start, Counter())
            entities = {k: found.get(k, 0) for k in top}
            if folded:
                entities[OTHER] = sum(n for k, n in found.items() if k not in top)
            series.append({"start": _iso(datetime.fromtimestamp(start, UTC)),
                           "requests": sum(outcomes.values()),
                           "outcomes": {o: outcomes.get(o, 0) for o in OUTCOMES},
                           "entities": entities})
            start += BUCKETS[width]
        rules = self.blocks_by_rule.most_common(TOP_RULES)
        rest = sum(self.blocks_by_rule.values()) - sum(n for _, n in rules)
        return {
            "matched": self.matched, "bucket": width,
            "first_time": _iso(self.first) if self.first else None,
            "last_time": _iso(self.last) if self.last else None,
            "series": series, "entity_types": top + ([OTHER] if folded else []),
            "blocks_by_rule": [{"rule": r, "count": n} for r, n in rules]
            + ([{"rule": OTHER, "count": rest}] if rest else []),
            "options": {k: sorted(v) for k, v in self.options.items()},
        }


def summarize(rows: Iterable[Row], filters: Filters) -> Summary:
    summary = Summary()
    for row in rows:
        summary.add(row, filters.keeps(row))
    return summary
