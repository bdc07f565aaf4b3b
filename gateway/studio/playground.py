"""The playground's API: a prompt (or a whole chat request) through a policy, exactly as the
gateway would take it, and the policy's editor (validate as you type, save when asked).

Every answer comes from the gateway's own code: the policy loader (a draft is loaded as if it
were saved, `extends` and all), the API's request walk (so every field the gateway scans is
scanned), the detection engine and the protect stage (`gateway.explain`), the vault's restore.
Only the config's policy files and the bases they extend can be read or written, named as the
listing names them; nothing else on the disk is reachable. Policy text, prompts and signing
keys are never logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.api import anthropic, openai
from gateway.api.endpoint import ApiRequest, Endpoint
from gateway.errors import (
    ConfigError,
    ConfigIssue,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    SignatureError,
)
from gateway.explain import analyze_request, compiled_for, protected
from gateway.ingress.body import decode_json_object, read_body
from gateway.inspection import Inspector, Reading
from gateway.observability.logging import get_logger
from gateway.plugins import plugin_entities
from gateway.policy import signing
from gateway.policy.active import hash_issue
from gateway.policy.loader import LoadedPolicy, chain_files, load_policy
from gateway.privacy.restorer import StreamRestorer
from gateway.protect import Protection
from gateway.studio.context import Studio
from gateway.studio.files import replace_file

log = get_logger("veil.studio")

MAX_REQUEST_BYTES = 1024 * 1024  # an API call to the playground, whole
MAX_PROMPT_CHARS = 100_000  # a prompt, or every text of a chat together
MAX_POLICY_CHARS = 256 * 1024  # a policy file's text
REPLY_PIECE_CHARS = 6  # the sample reply is restored as a stream arrives, in pieces this long
TENANT = "*"  # as `veil policy explain`: placeholders are numbered, never keyed per tenant
APIS: Mapping[str, Endpoint] = {"chat_completions": openai.CHAT, "messages": anthropic.MESSAGES}


def routes(studio: Studio) -> list[web.RouteDef]:
    return [
        web.get("/api/playground/policies", _answering(studio, _policies)),
        web.post("/api/playground/analyze", _answering(studio, _analyze)),
        web.post("/api/playground/validate", _answering(studio, _validate)),
        web.post("/api/playground/save", _answering(studio, _save)),
    ]


Answer = dict[str, Any]
Answering = Callable[[Studio, web.Request], Awaitable[Answer]]


def _answering(studio: Studio, answer: Answering) -> Handler:
    """A handler: `answer(studio, request)` as JSON, or its `GatewayError` as the OpenAI error
    envelope with a request id (logged with the code, never with the request's content); a
    policy that does not load is a 400 listing every issue at its file, line and column."""
    async def handler(request: web.Request) -> web.Response:
        try:
            return web.json_response(await answer(studio, request))
        except GatewayError as exc:
            return _refusal(exc)
        except ConfigError as exc:
            files = Files(studio)
            return _refusal(InvalidRequest(
                f"The policy does not load ({len(exc.issues)} problem(s)); nothing was written.",
                code="invalid_policy"), [_issue(files, i) for i in exc.issues])
        except Exception as exc:  # fail closed, and say only what kind of failure it was
            # no traceback: an exception's text may quote the prompt or the policy
            log.error("studio_failed", path=request.path,  # noqa: TRY400
                      error=type(exc).__name__)
            return _refusal(GatewayError("The studio failed to answer; see its log."))

    return handler


def _refusal(exc: GatewayError, issues: list[dict[str, Any]] | None = None) -> web.Response:
    request_id = "studio-" + secrets.token_hex(8)
    envelope = exc.envelope(request_id)
    if issues is not None:
        envelope["error"]["issues"] = issues
    log.info("studio_refused", code=exc.code, status=exc.status, request_id=request_id)
    return web.json_response(envelope, status=exc.status)


# --- which files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Files:
    """The config's policy files and the bases they extend, under the names the listing shows
    (relative to the config's folder): the only files this API reads or writes."""

    studio: Studio

    @property
    def folder(self) -> Path:
        return self.studio.config_path.resolve().parent

    def shown(self, file: str | Path) -> str:
        return self.studio.shown(file)

    def configured(self) -> list[Path]:
        return [p.resolve() for p in self.studio.policy_files]

    def chains(self) -> dict[Path, list[Path]]:
        """Each configured policy -> its files, itself first (read fresh: `extends` changes)."""
        return {p: [Path(f).resolve() for f in chain_files(p)] for p in self.configured()}

    def allowed(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for chain in self.chains().values():
            for path in chain:
                found.setdefault(self.shown(path), path)
        return found

    def named(self, name: object) -> Path:
        if not isinstance(name, str):
            raise InvalidRequest("'policy' must be a string: a file as the listing names it.",
                                 param="policy", code="invalid_type")
        path = self.allowed().get(name)
        if path is None:
            raise NotFound("No policy file of that name in this config (the listing names "
                           "each, and the bases they extend).", param="policy",
                           code="policy_not_found")
        return path


def _issue(files: Files, issue: ConfigIssue) -> dict[str, Any]:
    position = issue.position
    return {"file": files.shown(issue.file) if not issue.file.startswith("$") else issue.file,
            "line": position.line if position else None,
            "column": position.column if position else None,
            "key": issue.key, "message": issue.message}


# --- reading the request -------------------------------------------------------------------

async def _body(request: web.Request) -> dict[str, Any]:
    """Read and decoded as the gateway reads a request: under a size limit, strict JSON."""
    return decode_json_object(await read_body(request, MAX_REQUEST_BYTES))


def _text(body: Mapping[str, Any], key: str, limit: int, *, required: bool = True
          ) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string.", param=key, code="invalid_type")
    if len(value) > limit:
        raise PayloadTooLarge(f"'{key}' is over {limit} characters.", param=key)
    return value


def _scores(body: Mapping[str, Any]) -> dict[str, float]:
    """What the encrypted scorer would answer, as `veil policy explain --score` takes it."""
    value = body.get("scores", {})
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in value.items()):
        raise InvalidRequest("'scores' must map 'scorer/model/label' to a number.",
                             param="scores", code="invalid_type")
    return {k: float(v) for k, v in value.items()}


def _chat(body: Mapping[str, Any]) -> ApiRequest:
    """The chat as the gateway parses it: the API's declared structure, every text found."""
    api = body.get("api", "chat_completions")
    endpoint = APIS.get(api) if isinstance(api, str) else None
    if endpoint is None:
        raise InvalidRequest(f"'api' must be one of: {', '.join(APIS)}.", param="api",
                             code="invalid_type")
    chat = body["chat"]
    if not isinstance(chat, dict):
        raise InvalidRequest("'chat' must be a JSON object: a whole request body.",
                             param="chat", code="invalid_type")
    parsed = endpoint.parse(chat, {})
    if sum(len(t) for t in parsed.scan.texts) > MAX_PROMPT_CHARS:
        raise PayloadTooLarge(f"The chat's texts are over {MAX_PROMPT_CHARS} characters.",
                              param="chat")
    return parsed


def _loaded(files: Files, path: Path, drafts: Mapping[Path, str]) -> LoadedPolicy:
    """The policy as the gateway would load it (a draft read in place of its file): a
    `ConfigError` listing every problem otherwise."""
    loaded = load_policy(path, plugin_entities, drafts)
    unusable = hash_issue(str(path), loaded, files.studio.settings.privacy.hash_key_env
                          is not None)
    if unusable is not None:
        raise ConfigError([unusable])
    return loaded


# --- the answers ---------------------------------------------------------------------------

async def _policies(studio: Studio, request: web.Request) -> Answer:
    files = Files(studio)
    listed = []
    for path, chain in files.chains().items():
        entry: dict[str, Any] = {"path": files.shown(path),
                                 "files": [files.shown(f) for f in chain]}
        try:
            loaded = _loaded(files, path, {})
        except ConfigError as exc:
            entry.update(name=None, digest=None, issues=[_issue(files, i) for i in exc.issues])
        else:
            entry.update(name=loaded.name, digest=loaded.digest,
                         issues=_unsigned(files, path, loaded))
        listed.append(entry)
    texts = []
    for name, path in files.allowed().items():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
        texts.append({"path": name, "text": text})
    signed = studio.settings.policies.require_signed_policies
    return {"config": files.shown(studio.config_path), "policies": listed, "files": texts,
            "signing_required": signed}


def _unsigned(files: Files, path: Path, loaded: LoadedPolicy) -> list[dict[str, Any]]:
    """Why the gateway would refuse this policy's signatures, when the config requires them
    (as `load_policy_set` says it): a policy it would not load is not what it enforces."""
    policies = files.studio.settings.policies
    if not policies.require_signed_policies:
        return []
    try:
        signing.verify_chain(loaded.files,
                             signing.load_public_key(Path(policies.public_key_file or "")))
    except (OSError, ValueError, SignatureError) as exc:
        reason = str(exc) if isinstance(exc, SignatureError) else "policies.public_key_file " \
            "is not a usable Ed25519 public key"
        return [_issue(files, ConfigIssue(str(path), None, "signature", reason))]
    return []


async def _analyze(studio: Studio, request: web.Request) -> Answer:
    body = await _body(request)
    files = Files(studio)
    path = files.named(body.get("policy"))
    draft = _text(body, "draft", MAX_POLICY_CHARS, required=False)
    if ("prompt" in body) == ("chat" in body):
        raise InvalidRequest("Give either 'prompt' (text) or 'chat' (a request body).",
                             param="prompt", code="invalid_type")
    scores = _scores(body)
    loaded = _loaded(files, path, {path: draft} if draft is not None else {})
    compiled = compiled_for(loaded)
    engine = studio.engine
    await engine.prepare([compiled.selection])
    inspector = Inspector(engine)
    if "prompt" in body:
        prompt = _text(body, "prompt", MAX_PROMPT_CHARS) or ""
        protection = await protected(inspector, compiled, [prompt], Reading.plain([prompt]),
                                     scores=scores, tenant=TENANT)
        texts = [prompt]
        sent: str | dict[str, Any] | None = protection.texts[0] if protection.texts else None
    else:
        chat = _chat(body)
        texts = chat.scan.texts if compiled.scans else []
        protection = await analyze_request(inspector, compiled, chat, scores, TENANT)
        sent = None
        if protection.texts is not None:
            chat.scan.write(protection.texts)  # as the pipeline writes the body it forwards
            sent = chat.body
    return {"policy": {"path": files.shown(path), "name": loaded.name,
                       "digest": loaded.digest, "draft": draft is not None},
            "texts": _texts(texts, protection), "decision": _decision(protection),
            "sent": sent, "reply": _reply(protection)}


def _texts(texts: Sequence[str], protection: Protection) -> list[dict[str, Any]]:
    decision = protection.decision
    out = []
    for i, text in enumerate(texts):
        findings = protection.findings[i] if i < len(protection.findings) else ()
        out.append({
            "text": text,
            "masked": protection.texts[i] if protection.texts is not None else None,
            "findings": [{"entity": s.entity, "detector": s.detector,
                          "score": round(s.score, 3), "action": decision.actions.get(s.entity),
                          "start": s.start, "end": s.end,
                          "utf16_start": utf16_offset(text, s.start),
                          "utf16_end": utf16_offset(text, s.end)}
                         for s in findings]})
    return out


def utf16_offset(text: str, index: int) -> int:
    """Where code point `index` of `text` falls in a JavaScript string (UTF-16 code units:
    each character beyond the Basic Multilingual Plane, emoji among them, counts two)."""
    return index + sum(1 for ch in text[:index] if ord(ch) > 0xFFFF)


def _decision(protection: Protection) -> dict[str, Any]:
    decision = protection.decision
    return {"outcome": decision.outcome, "rule": decision.rule,
            "requires": list(decision.requires), "data_classes": list(decision.data_classes),
            "actions": dict(decision.actions), "found": dict(protection.found),
            "failed_open": list(protection.failed_open),
            "attachments": dict(protection.attachments),
            "refusal": protection.refusal().message if protection.blocked else None}


def _reply(protection: Protection) -> dict[str, str] | None:
    """A reply such as a model gives, repeating every placeholder it was sent, and what the
    client gets back: restored by the gateway's stream restorer, piece by piece."""
    if protection.texts is None:
        return None
    model = "You wrote:\n" + "\n".join(t for t in protection.texts if t.strip())
    restorer = StreamRestorer(protection.vault)
    restored = "".join(restorer.feed(model[i:i + REPLY_PIECE_CHARS])
                       for i in range(0, len(model), REPLY_PIECE_CHARS)) + restorer.flush()
    return {"model": model, "restored": restored}


async def _validate(studio: Studio, request: web.Request) -> Answer:
    body = await _body(request)
    files = Files(studio)
    path = files.named(body.get("policy"))
    text = _text(body, "text", MAX_POLICY_CHARS) or ""
    issues = _problems(files, path, text)
    return {"ok": not issues, "issues": [_issue(files, i) for i in issues]}


def _problems(files: Files, path: Path, text: str) -> list[ConfigIssue]:
    """Every problem `text`, saved as `path`, would cause: in each configured policy whose
    chain holds the file (a base's edit can break a policy that extends it)."""
    drafts = {path: text}
    using = [p for p, chain in files.chains().items() if path in chain]
    issues: list[ConfigIssue] = []
    for policy in using:
        try:
            _loaded(files, policy, drafts)
        except ConfigError as exc:
            issues += [i for i in exc.issues if i not in issues]
    return issues


async def _save(studio: Studio, request: web.Request) -> Answer:
    body = await _body(request)
    files = Files(studio)
    path = files.named(body.get("policy"))
    text = _text(body, "text", MAX_POLICY_CHARS) or ""
    key = _text(body, "signing_key", 4096, required=False)
    issues = _problems(files, path, text)
    if issues:
        raise ConfigError(issues)
    data = text.encode("utf-8")
    name, digest = _named_digest(files, path, text)
    signature = _signature(studio, data, key) \
        if studio.settings.policies.require_signed_policies else None
    # the policy, then its signature: a watcher that reads between the two finds them
    # mismatched, refuses the reload and keeps the policy in force until the next look
    replace_file(path, data)
    if signature is not None:
        replace_file(signing.signature_path(path), signature.encode())
    log.info("policy_saved", file=files.shown(path), signed=signature is not None)
    return {"path": files.shown(path), "name": name, "digest": digest,
            "signed": signature is not None}


def _named_digest(files: Files, path: Path, text: str) -> tuple[str | None, str | None]:
    """The saved file's own name and digest; none for a base that is only valid as extended
    (checked already, in every policy that extends it)."""
    try:
        loaded = _loaded(files, path, {path: text})
    except ConfigError:
        return None, None
    return loaded.name, loaded.digest


def _signature(studio: Studio, data: bytes, key: str | None) -> str:
    """The `.sig` for `data`, checked against the key the gateway verifies with before
    anything is written: a wrong key writes nothing."""
    if not key:
        raise InvalidRequest("This config requires signed policies: give the path of the "
                             "Ed25519 private key to sign with.", param="signing_key",
                             code="signing_key_required")
    public_file = studio.settings.policies.public_key_file
    try:
        public_key = signing.load_public_key(Path(public_file or ""))
    except (OSError, ValueError, SignatureError):
        raise InvalidRequest("policies.public_key_file is not a usable Ed25519 public key.",
                             code="public_key_unusable") from None
    try:
        signature = signing.signature_text(data, Path(key))
    except (OSError, ValueError, TypeError, SignatureError):
        raise InvalidRequest("The signing key cannot be read as an unencrypted Ed25519 "
                             "private key (PEM).", param="signing_key",
                             code="signing_key_unusable") from None
    try:
        signing.verify_text(data, signature, public_key, "the new policy")
    except SignatureError:
        raise InvalidRequest("The signing key is not the one policies.public_key_file "
                             "verifies: nothing was written.", param="signing_key",
                             code="signing_key_mismatch") from None
    return signature
