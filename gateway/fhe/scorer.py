"""`veil scorer serve`: the encrypted scoring service, deployable apart from the gateway and
possibly run by another party. It holds models and the evaluation keys gateways send; it never
holds a secret key and never sees an input or a score.

    GET  /v1/models                       what each model is (labels, rotations), no weights
    PUT  /v1/keys/<key id>                a gateway's evaluation (Galois) keys for a key epoch
    POST /v1/score/<model>                body: a query ciphertext; X-Veil-Key-Id header;
                                          X-Veil-Queries: how many queries it packs (1, 2, 4
                                          or 8: one of the model's `packings`; default 1)
         -> {"model", "key_id", "queries", "ciphertexts": [base64, one per output set]}
         -> 409 {"error": {"code": "unknown_key"}} when the key id was not sent yet, or was
            dropped after going unused for --grace-s (the gateway then sends it again)

Scoring runs in one worker process per core (the SEAL bindings hold the GIL); each worker
compiles the models (encoded diagonals, for every packing) once, before the port opens, and
loads each key epoch's keys once. A pass with several output sets is shared among the workers.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import itertools
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenseal.sealapi as seal
from aiohttp import web

from gateway.errors import BodyTooLarge, CiphertextError, MissingKeys
from gateway.fhe.key_grace import KeyGrace
from gateway.fhe.scoring import CompiledModel, ModelFile, compile_model, evaluate, load_model
from gateway.fhe.seal import checked_ciphertext, galois_element, load, new_context, to_bytes
from gateway.observability.logging import get_logger
from gateway.streams import read_at_most

log = get_logger("veil.scorer")
KEY_ID = re.compile(r"^fhe-[0-9A-Za-z-]{1,64}$")
MAX_KEYS_BYTES = 64 * 1024 * 1024
MAX_QUERY_BYTES = 300 * 1024


@dataclass(frozen=True)
class ScorerSettings:
    models_dir: Path
    keys_dir: Path
    workers: int = max(1, os.cpu_count() or 1)
    grace_s: float = 86_400.0  # an epoch's keys unused this long are dropped (key_grace.py)


def load_models(models_dir: Path) -> dict[str, ModelFile]:
    models = {path.stem: load_model(path) for path in sorted(models_dir.glob("*.npz"))}
    if not models:
        raise SystemExit(f"veil scorer: no models (*.npz) in {models_dir}")
    return models


# -- worker processes -----------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(models_dir: str, keys_dir: str) -> None:
    context = new_context()
    _worker.update(context=context, evaluator=seal.Evaluator(context), keys_dir=Path(keys_dir),
                   keys={}, models={name: compile_model(model, context)
                                    for name, model in load_models(Path(models_dir)).items()})


def _score(model: str, queries: int, key_id: str, query: bytes, sets: tuple[int, int]
           ) -> list[bytes]:
    context: seal.SEALContext = _worker["context"]
    compiled: CompiledModel = _worker["models"][model][queries]
    path: Path = _worker["keys_dir"] / f"{key_id}.galois"
    try:
        version = path.stat().st_mtime_ns  # keys re-sent for the same epoch replace the file
    except FileNotFoundError:  # dropped after its grace period, since the handler looked
        raise MissingKeys from None
    for other in [k for k in _worker["keys"] if k != key_id]:  # dropped epochs leave memory too
        if not (_worker["keys_dir"] / f"{other}.galois").is_file():
            del _worker["keys"][other]
    cached = _worker["keys"].get(key_id)
    if cached is None or cached[0] != version:
        galois = seal.GaloisKeys()
        load(galois, context, path.read_bytes())
        cached = _worker["keys"][key_id] = (version, galois)
    galois = cached[1]
    if not all(galois.has_key(galois_element(step))
               for step in compiled.layout.rotation_steps()):
        raise MissingKeys
    ciphertext = checked_ciphertext(context, query, parms_id=context.first_parms_id(),
                                    max_bytes=MAX_QUERY_BYTES)
    return [to_bytes(block) for block in evaluate(ciphertext, compiled, _worker["evaluator"],
                                                  galois, range(*sets))]


def _shares(sets: int, workers: int) -> list[tuple[int, int]]:
    """A pass's output sets cut into one contiguous share per worker: a packed pass uses every
    core (each worker repeats only the baby steps)."""
    parts = min(sets, workers)
    bounds = [sets * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _ready() -> bool:
    return bool(_worker)


# -- the HTTP service -----------------------------------------------------------------------

def build_scorer_app(settings: ScorerSettings) -> web.Application:
    models = load_models(settings.models_dir)
    settings.keys_dir.mkdir(parents=True, exist_ok=True)
    grace = KeyGrace(settings.keys_dir, settings.grace_s)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=settings.workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(str(settings.models_dir), str(settings.keys_dir)))

    async def list_models(_: web.Request) -> web.Response:
        return web.json_response({"models": [m.describe() for m in models.values()]})

    async def put_keys(request: web.Request) -> web.Response:
        key_id = request.match_info["key_id"]
        if not KEY_ID.match(key_id):
            return _error(400, "bad_key_id", "key ids look like fhe-<date>-<hex>")
        try:
            body = await read_at_most(request.content, MAX_KEYS_BYTES)
        except BodyTooLarge:
            return _error(413, "too_large", "evaluation keys over 64 MiB")
        try:  # only evaluation keys are accepted; SEAL validates them against the context
            load(seal.GaloisKeys(), new_context(), body)
        except (ValueError, RuntimeError):
            return _error(400, "bad_keys", "not Galois keys for these CKKS parameters")
        path = settings.keys_dir / f"{key_id}.galois"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(body)
        temporary.replace(path)
        grace.used(key_id)
        log.info("keys_received", key_id=key_id, bytes=len(body))
        return web.Response(status=204)

    sets = {name: {layout.queries: layout.sets for layout in m.packings()}
            for name, m in models.items()}

    async def score(request: web.Request) -> web.Response:
        model, key_id = request.match_info["model"], request.headers.get("X-Veil-Key-Id", "")
        queries = request.headers.get("X-Veil-Queries", "1")
        if (refused := _refusal(sets, settings.keys_dir, model, queries, key_id)) is not None:
            return refused
        grace.used(key_id)
        try:
            body = await read_at_most(request.content, MAX_QUERY_BYTES)
        except BodyTooLarge:
            return _error(413, "too_large", "a query is one ciphertext (under 300 KiB)")
        try:
            shares = await asyncio.gather(*[
                asyncio.get_running_loop().run_in_executor(
                    pool, _score, model, int(queries), key_id, body, share)
                for share in _shares(sets[model][int(queries)], settings.workers)])
        except CiphertextError as exc:
            return _error(400, "bad_ciphertext", str(exc))
        except MissingKeys:
            return _error(409, "unknown_key", "these keys lack rotations this model needs")
        return web.json_response({"model": model, "key_id": key_id, "queries": int(queries),
                                  "ciphertexts": [base64.b64encode(block).decode()
                                                  for blocks in shares for block in blocks]})

    async def prune_keys() -> None:
        while True:
            await asyncio.sleep(grace.interval_s)
            grace.prune()

    async def lifecycle(_: web.Application) -> Any:
        # Every worker compiles its models before the port opens: a first query waiting on a
        # compile could outlive a short --grace-s, and would be a latency outlier anyway.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[loop.run_in_executor(pool, _ready)
                               for _ in range(settings.workers)])
        pruning = asyncio.create_task(prune_keys())
        yield
        pruning.cancel()
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=MAX_KEYS_BYTES + 1024)
    app.router.add_get("/v1/models", list_models)
    app.router.add_put("/v1/keys/{key_id}", put_keys)
    app.router.add_post("/v1/score/{model}", score)
    app.cleanup_ctx.append(lifecycle)
    return app


def _refusal(sets: dict[str, dict[int, int]], keys_dir: Path, model: str, queries: str,
             key_id: str) -> web.Response | None:
    """Why a score request is refused before its body is read, if it is."""
    if model not in sets:
        return _error(404, "unknown_model", f"no model {model!r}")
    if not queries.isdigit() or int(queries) not in sets[model]:
        return _error(400, "bad_packing", f"model {model} packs {sorted(sets[model])} queries")
    if not KEY_ID.match(key_id) or not (keys_dir / f"{key_id}.galois").is_file():
        return _error(409, "unknown_key", "send the evaluation keys for this key id first")
    return None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
