"""The Cases view's API: run a policy's cases file as `veil policy test` does, and add the
playground's prompt to it as a new case.

A request names a policy by its path exactly as the config lists it; the cases file is derived
from that entry (`cases_file.cases_file_for`), never from anything the request says, so no
other file can be read or written. Cases are loaded, run and judged by the code `veil policy
test` uses (`load_cases`' loader and model, `explain.run_cases`, `explain.differences`): a case
passes here exactly when it passes there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pydantic
from aiohttp import web

from gateway.errors import CasesFileRefused, ConfigError, GatewayError, StudioRefused
from gateway.explain import Analysis, Verdict, analyze, differences, run_cases, verdict
from gateway.plugins import plugin_entities
from gateway.policy.cases import Case, Expectation
from gateway.policy.loader import LoadedPolicy, load_policy
from gateway.studio.cases_file import append_case, cases_file_for, issues_of, read_cases
from gateway.studio.context import Studio

MAX_BODY_BYTES = 256 * 1024
MAX_NAME_CHARS = 200
MAX_PROMPT_CHARS = 32_000
JsonHandler = Callable[[web.Request], Awaitable[dict[str, Any]]]


def routes(studio: Studio) -> list[web.RouteDef]:
    writing = asyncio.Lock()  # one add at a time: each appends to what the last one wrote

    async def files(_request: web.Request) -> dict[str, Any]:
        return {"files": [_listing(policy) for policy in studio.policy_files]}

    async def run(request: web.Request) -> dict[str, Any]:
        policy = _policy(studio, await _body(request, {"policy"}))
        return await _run(studio, policy)

    async def expectation(request: web.Request) -> dict[str, Any]:
        body = await _body(request, {"policy", "prompt"})
        loaded = _load_policy(_policy(studio, body))
        got = await _verdict(studio, loaded, _prompt(body))
        return {"expect": _recorded(got).model_dump()}

    async def add(request: web.Request) -> dict[str, Any]:
        body = await _body(request, {"policy", "name", "prompt"}, optional=frozenset({"expect"}))
        policy = _policy(studio, body)
        async with writing:
            return await _add(studio, policy, body)

    return [web.get("/api/cases/files", _answering(files)),
            web.post("/api/cases/run", _answering(run)),
            web.post("/api/cases/expectation", _answering(expectation)),
            web.post("/api/cases/add", _answering(add))]


def _answering(handler: JsonHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        try:
            return web.json_response(await handler(request))
        except StudioRefused as refused:
            error = {"message": refused.message, "type": refused.code, "code": refused.code,
                     **refused.extra}
            return web.json_response({"error": error}, status=refused.status)
        except GatewayError as failed:  # detection failing as it would in the gateway (503)
            error = {"message": failed.message, "type": failed.error_type, "code": failed.code}
            return web.json_response({"error": error}, status=failed.status)

    return answer


async def _body(request: web.Request, required: set[str],
                optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON object sent, with exactly the keys this call takes (unknown ones refused)."""
    too_large = StudioRefused(413, "request_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    try:
        raw = await request.read()  # the app's client_max_size bounds a body of no length
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > MAX_BODY_BYTES:
        raise too_large
    try:
        body = json.loads(raw)
    except ValueError:
        raise StudioRefused(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise StudioRefused(400, "invalid_request", "the body must be a JSON object")
    missing = sorted(required - body.keys())
    unknown = sorted(body.keys() - required - optional)
    if missing or unknown:
        raise StudioRefused(400, "invalid_request", "; ".join(
            ([f"missing: {', '.join(missing)}"] if missing else [])
            + ([f"unknown: {', '.join(unknown)}"] if unknown else [])))
    return body


def _text(body: dict[str, Any], key: str, limit: int) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise StudioRefused(400, "invalid_request", f"{key} must be a string")
    if not value.strip():
        raise StudioRefused(400, "invalid_request", f"{key} is empty")
    if len(value) > limit:
        raise StudioRefused(413, "too_long", f"{key} is over {limit} characters")
    return value


def _prompt(body: dict[str, Any]) -> str:
    return _text(body, "prompt", MAX_PROMPT_CHARS)


def _name(body: dict[str, Any]) -> str:
    name = _text(body, "name", MAX_NAME_CHARS).strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise StudioRefused(400, "invalid_request", "name must be one line, without control "
                                              "characters")
    return name


def _policy(studio: Studio, body: dict[str, Any]) -> Path:
    """The config's own entry named by the request: nothing else is a policy here."""
    named = body["policy"]
    for policy in studio.policy_files:
        if isinstance(named, str) and named == str(policy):
            return policy
    raise StudioRefused(404, "unknown_policy", "not one of the config's policy files")


def _load_policy(policy: Path) -> LoadedPolicy:
    try:
        return load_policy(policy, plugin_entities)
    except ConfigError as exc:
        raise StudioRefused(422, "invalid_policy", str(exc), issues=issues_of(exc)) from None


def _cases(path: Path) -> list[Case]:
    try:
        return read_cases(path)
    except ConfigError as exc:
        raise StudioRefused(422, "invalid_cases_file", str(exc), issues=issues_of(exc)) from None


def _listing(policy: Path) -> dict[str, Any]:
    path = cases_file_for(policy)
    listing: dict[str, Any] = {"policy": str(policy), "cases_file": str(path),
                               "exists": path.exists(), "count": None, "error": None}
    try:
        listing["count"] = len(read_cases(path))
    except ConfigError as exc:
        listing["error"] = str(exc)
    return listing


async def _run(studio: Studio, policy: Path) -> dict[str, Any]:
    path = cases_file_for(policy)
    cases = _cases(path)
    if not cases:
        raise StudioRefused(404, "no_cases_file", f"{path} has no cases yet: add the first one")
    analyses = await run_cases(_load_policy(policy), cases, studio.ner_workers)
    results = [_result(case, analysis) for case, analysis in zip(cases, analyses, strict=True)]
    passed = sum(result["passed"] for result in results)
    return {"policy": str(policy), "cases_file": str(path), "passed": passed,
            "failed": len(results) - passed, "cases": results}


def _result(case: Case, analysis: Analysis) -> dict[str, Any]:
    expected = case.expect.model_dump()
    got = asdict(verdict(analysis))
    differing = differences(analysis, case)
    return {"name": case.name, "prompt": case.prompt, "passed": not differing,
            "expected": expected, "got": got,
            "diff": [{"field": field, "expected": expected[field], "got": got[field]}
                     for field in differing]}


async def _verdict(studio: Studio, loaded: LoadedPolicy, prompt: str) -> Verdict:
    return verdict((await analyze(loaded, [(prompt, {}, "*")], studio.ner_workers))[0])


def _recorded(got: Verdict) -> Expectation:
    """What a new case expects when the user gives no expectation: today's decision."""
    return Expectation(outcome=got.outcome, rule=got.rule, requires=got.requires or None,
                       found=got.found)


async def _add(studio: Studio, policy: Path, body: dict[str, Any]) -> dict[str, Any]:
    name, prompt = _name(body), _prompt(body)
    path = cases_file_for(policy)
    if any(case.name == name for case in _cases(path)):
        raise StudioRefused(409, "duplicate_case", f"{path} already has a case named {name!r}")
    loaded = _load_policy(policy)
    recorded = "expect" not in body
    try:
        expect = (_recorded(await _verdict(studio, loaded, prompt)) if recorded
                  else Expectation.model_validate(body["expect"]))
    except pydantic.ValidationError as exc:
        raise StudioRefused(400, "invalid_expectation", "; ".join(
            f"expect.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        ) from None
    case = Case(name=name, prompt=prompt, expect=expect)
    try:
        append_case(path, case)
    except CasesFileRefused as exc:
        raise StudioRefused(409, "cannot_append", str(exc)) from None
    except ConfigError as exc:
        raise StudioRefused(422, "invalid_cases_file", str(exc), issues=issues_of(exc)) from None
    except OSError as exc:
        raise StudioRefused(500, "write_failed", f"cannot write {path}: {exc.strerror}") from None
    return {"cases_file": str(path), "case": case.model_dump(), "recorded": recorded,
            "count": len(_cases(path))}
