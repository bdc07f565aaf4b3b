"""The audit view's API: the gateway's audit trail as the config names it, verified with the
gateway's own `verify`, and its records listed and charted without a value in sight.

Only the chains of the configured `audit.path` are read (`audit.jsonl`, its rotations, and the
per-replica and per-worker `audit.<tags>.jsonl` beside it); no request names a file. The key
is found as the gateway finds it (`GatewayKeys`: `audit.key_env`, `key_file` or the HSM's
`key_hsm_label`); without one the chain is reported unverifiable (503), never verified.
Files are scanned off the event loop, one line at a time; listing needs no key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import StudioRefused, TokenError
from gateway.keys.material import Signer
from gateway.keys.sources import GatewayKeys
from gateway.observability.audit import Verdict, chains, record_lines, verify
from gateway.settings import AuditSettings, Settings
from gateway.studio.audit_summary import (
    FILTERS,
    Filters,
    Row,
    bad_query,
    page,
    parse_cursor,
    parse_limit,
    refuse_unknown,
    row_from,
    summarize,
)
from gateway.studio.context import Studio


def chain_files(audit: AuditSettings) -> dict[str, list[Path]]:
    """The configured path's chains, oldest file first; symlinks are not followed."""
    configured = Path(audit.path)
    stem, dot, suffix = configured.name.rpartition(".")
    try:
        found = chains(configured.parent)
    except FileNotFoundError:
        return {}

    def ours(name: str) -> bool:
        family = bool(dot) and name.startswith(f"{stem}.") and name.endswith(f".{suffix}")
        return name == configured.name or family

    kept = {name: [f for f in files if not f.is_symlink()]
            for name, files in found.items() if ours(name)}
    return {name: files for name, files in kept.items() if files}


def unverifiable(why: str) -> StudioRefused:
    return StudioRefused(503, "audit_key_unavailable", f"{why}: the chain cannot be verified")


def verification(settings: Settings, query: dict[str, str] | None = None) -> dict[str, Any]:
    """Every chain verified under the key as the gateway finds it (`GatewayKeys`: a variable,
    a file, or the HSM's token, which then computes the MACs itself)."""
    refuse_unknown(query or {}, ())
    audit = settings.audit
    if not (audit.key_env or audit.key_file or audit.key_hsm_label):
        raise unverifiable("the config names no audit key (audit.key_env, key_file or "
                           "key_hsm_label)")
    keys = GatewayKeys(settings, os.environ)
    try:
        return _verified(audit, keys.audit())
    except OSError as exc:
        raise unverifiable(f"cannot read the audit key: {exc.strerror}") from None
    except (ValueError, TokenError) as exc:
        raise unverifiable(f"the audit key is unusable: {exc}") from None
    finally:
        keys.close()


@dataclass
class Scan:
    """Every record of the chains as a row, and a count of the lines that are not one."""

    files: dict[str, list[Path]]
    unreadable: int = 0

    def rows(self) -> Iterator[Row]:
        for chain, files in self.files.items():
            for _file, _number, line in record_lines(files):
                try:
                    row = row_from(chain, orjson.loads(line))
                except orjson.JSONDecodeError:
                    row = None
                if row is None:
                    self.unreadable += 1
                else:
                    yield row


def _verified(audit: AuditSettings, key: Signer) -> dict[str, Any]:
    found = chain_files(audit)
    folder = Path(audit.path).parent
    verdicts = {name: verify(files, key) for name, files in found.items()}
    times = [t for v in verdicts.values() for t in (v.first_time, v.last_time) if t]
    return {
        "ok": bool(verdicts) and all(v.ok for v in verdicts.values()),
        "enabled": audit.enabled, "records": sum(v.records for v in verdicts.values()),
        "first_time": min(times, default=None), "last_time": max(times, default=None),
        "message": None if verdicts else f"no audit records in {folder}",
        "chains": [_chain_json(name, verdict, folder) for name, verdict in verdicts.items()],
    }


def _chain_json(name: str, verdict: Verdict, folder: Path) -> dict[str, Any]:
    """File names relative to the audit folder: the page names what the operator sees there."""
    broken = verdict.broken
    return {
        "chain": name, "ok": verdict.ok, "records": verdict.records,
        "message": verdict.message.replace(f"{folder}/", ""),
        "first_time": verdict.first_time, "last_time": verdict.last_time,
        "broken": None if broken is None else {
            "file": Path(broken.file).name, "line": broken.line, "seq": broken.seq,
            "reason": broken.reason},
    }


def records(audit: AuditSettings, query: dict[str, str]) -> dict[str, Any]:
    refuse_unknown(query, (*FILTERS, "limit", "cursor"))
    filters, limit = Filters.parse(query), parse_limit(query.get("limit"))
    cursor = parse_cursor(query.get("cursor"))
    scan = Scan(chain_files(audit))
    shown = page(scan.rows(), filters, limit, cursor)
    return {"records": [r.as_json() for r in shown.rows], "next_cursor": shown.next_cursor,
            "limit": limit, "unreadable": scan.unreadable}


def summary(audit: AuditSettings, query: dict[str, str]) -> dict[str, Any]:
    refuse_unknown(query, (*FILTERS, "bucket"))
    filters, bucket = Filters.parse(query), query.get("bucket") or "auto"
    scan = Scan(chain_files(audit))
    return {**summarize(scan.rows(), filters).as_json(bucket), "unreadable": scan.unreadable}


def routes(studio: Studio) -> list[web.RouteDef]:
    audit = studio.settings.audit
    return [
        web.get("/api/audit/verify", _answer(lambda query: verification(studio.settings,
                                                                         query))),
        web.get("/api/audit/records", _answer(lambda query: records(audit, query))),
        web.get("/api/audit/summary", _answer(lambda query: summary(audit, query))),
    ]


def _answer(work: Callable[[dict[str, str]], dict[str, Any]]) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        query = dict(request.query)
        try:
            if len(query) != len(request.query):
                raise bad_query(next(iter(query)), "each parameter may be given once")
            body = await asyncio.to_thread(work, query)
        except StudioRefused as refused:
            return _error(refused.status, refused.code, refused.message, **refused.extra)
        except OSError as exc:
            return _error(503, "audit_unreadable", f"cannot read the audit files: {exc.strerror}")
        return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())

    return handle


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The studio's error envelope, as the other views answer it."""
    return web.json_response({"error": {"message": message, "type": code, "code": code,
                                        **extra}}, status=status)
