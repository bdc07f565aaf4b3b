"""NER worker processes (`gateway.privacy.ner_worker`) and the queue in front of them.

One worker per core by default. Requests queue their texts; an idle worker takes every job
waiting (up to a batch size) as one batch, so under load many requests share one pass through
spaCy's `pipe` and throughput grows with load, while a lone request goes at once.

Self-healing: a worker that dies (killed, out of memory) fails the batch it was serving
(closed: nothing unscanned is forwarded) and is replaced at once; while no worker is alive,
requests are refused and `ready` is false. A worker whose memory grew past the limit is
replaced after its batch. A batch whose every request gave up (their time limit passed) is not
waited for: its worker is killed and replaced. Start-up is bounded: every worker is ready, or
`start()` raises with the reason, within `start_timeout_s`. Workers read their input until it
closes, so they end with this process however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import DetectorFailed, WorkerStartFailed
from gateway.observability.logging import get_logger
from gateway.offload import off_loop_if_big
from gateway.privacy.spans import Span

log = get_logger("veil.ner")
HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
BATCH_TEXTS = 512
BATCH_CHARS = 64_000  # requests waiting together share one batch up to this size
SHARE_CHARS = 100_000  # a request bigger than this is shared out among all the workers
IDLE_SHARE_CHARS = 1_500  # one bigger than this is shared out among the idle workers
ABANDONED_KILL_CHARS = 50_000  # about a second of NER: less is left to finish than killed
# A worker is one core's worth of work: a BLAS thread pool in each would oversubscribe cores.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class Job:
    texts: list[str]
    future: asyncio.Future[tuple[list[Any], float]]  # the answer as it came, and CPU
    size: int


@dataclass
class Worker:
    process: asyncio.subprocess.Process
    inflight: list[Job] = field(default_factory=list)
    ended_by_us: bool = False  # recycled or killed here: already replaced

    @property
    def pid(self) -> int:
        return self.process.pid


class NerPool:
    def __init__(self, size: int, *, log_level: str = "info", log_format: str = "json",
                 start_timeout_s: float = 120.0, max_rss_bytes: int = 1536 * 1024 * 1024,
                 on_restart: Callable[[str], None] = lambda reason: None) -> None:
        self.size = size
        self._args = ["--log-level", log_level, "--log-format", log_format]
        self._start_timeout = start_timeout_s
        self._max_rss = max_rss_bytes
        self._on_restart = on_restart
        self._workers: list[Worker] = []
        self._idle: list[Worker] = []
        self._queue: deque[Job] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawning: set[asyncio.subprocess.Process] = set()
        self._closing = False
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started and not self._closing and bool(self._workers)

    @property
    def pids(self) -> list[int]:
        """The workers serving now."""
        return [w.pid for w in self._workers]

    @property
    def pids_starting(self) -> list[int]:
        return [p.pid for p in self._spawning]

    async def start(self) -> None:
        """Every worker loaded and ready, or `WorkerStartFailed` with the reason. Logged
        before and after: loading spaCy takes seconds, a silent start looks hung."""
        started = time.monotonic()
        log.info("ner_loading", workers=self.size)
        try:
            async with asyncio.timeout(self._start_timeout):
                workers = await asyncio.gather(*[self._spawn() for _ in range(self.size)])
        except TimeoutError:
            await self.close()
            raise WorkerStartFailed(f"NER workers were not ready within {self._start_timeout:g}"
                                    " s") from None
        except WorkerStartFailed:
            await self.close()
            raise
        for worker in workers:
            self._adopt(worker)
        self._started = True
        log.info("ner_loaded", workers=self.size, seconds=round(time.monotonic() - started, 2))

    def shares(self, chars: int) -> int:
        """Into how many parts to cut a request of `chars` characters: one per idle worker
        when several are idle (a request alone then takes a fraction of the time; under load
        nothing is idle and nothing is cut, which would only add work), and a big request
        among all the workers even under load."""
        by_size = min(len(self._workers), -(-chars // SHARE_CHARS))
        by_idle = len(self._idle) if not self._queue and chars > IDLE_SHARE_CHARS else 1
        return max(1, by_size, by_idle)

    async def detect(self, texts: Sequence[str], shares: int = 1
                     ) -> tuple[list[list[Span]], float]:
        """Spans per text, and the CPU seconds the workers spent on them; the texts are cut
        into `shares` consecutive groups of about equal characters, one job each."""
        shares = min(shares, len(texts))
        if shares <= 1:
            return await self._job(texts)
        groups = _split(texts, shares)
        parts = await asyncio.gather(*[self._job(group) for group in groups])
        return [spans for found, _ in parts for spans in found], sum(cpu for _, cpu in parts)

    async def _job(self, texts: Sequence[str]) -> tuple[list[list[Span]], float]:
        if not self.ready:
            raise DetectorFailed("presidio", "unavailable")
        job = Job(list(texts), asyncio.get_running_loop().create_future(),
                  sum(len(t) for t in texts))
        self._queue.append(job)
        self._dispatch()
        try:
            answer, cpu = await job.future
        except asyncio.CancelledError:
            self._abandon(job)
            raise
        return await off_loop_if_big(job.size, _spans, answer), cpu

    async def close(self) -> None:
        self._closing = True
        for job in self._queue:
            _fail(job, "unavailable")
        self._queue.clear()
        workers, self._workers, self._idle = self._workers, [], []
        workers += [Worker(p) for p in self._spawning]
        await asyncio.gather(*[self._stop(w) for w in workers])
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- workers ---------------------------------------------------------------------------

    async def _spawn(self) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.privacy.ner_worker", *self._args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **ONE_THREAD})
        self._spawning.add(process)
        worker = Worker(process)
        try:
            hello = await _read(process)
        except (asyncio.IncompleteReadError, ValueError):
            code = await process.wait()
            raise WorkerStartFailed(f"an NER worker exited (code {code}) before it was "
                                    "ready") from None
        except BaseException:  # cancelled, or timed out: never leave it behind
            await self._stop(worker)
            raise
        finally:
            self._spawning.discard(process)
        if not isinstance(hello, dict) or not hello.get("ready"):
            await self._stop(worker)
            raise WorkerStartFailed("an NER worker did not say it was ready")
        log.info("ner_worker_ready", pid=worker.pid)
        return worker

    def _adopt(self, worker: Worker) -> None:
        self._workers.append(worker)
        self._idle.append(worker)
        self._background(self._listen(worker))
        self._dispatch()

    async def _listen(self, worker: Worker) -> None:
        try:
            while True:
                self._answered(worker, await _read(worker.process))
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            pass
        finally:
            if not self._closing:
                await self._lost(worker)

    def _answered(self, worker: Worker, answer: Any) -> None:
        jobs, worker.inflight = worker.inflight, []
        if not isinstance(answer, dict) or "spans" not in answer:
            for job in jobs:
                _fail(job, "error")
        else:
            _deliver(jobs, answer["spans"], float(answer.get("cpu", 0.0)))
            if int(answer.get("rss", 0)) > self._max_rss:
                self._end(worker, "memory")
                return
        self._idle.append(worker)
        self._dispatch()

    async def _lost(self, worker: Worker) -> None:
        """A worker ended: fail what it held; replace it, unless it was ended here."""
        code = await worker.process.wait()
        jobs, worker.inflight = worker.inflight, []
        for job in jobs:
            _fail(job, "crashed")
        self._forget(worker)
        if worker.ended_by_us:
            return
        log.error("ner_worker_died", pid=worker.pid, code=code, failed_requests=len(jobs))
        self._on_restart("died")
        self._background(self._replace())

    def _end(self, worker: Worker, reason: str) -> None:
        """Replace a worker on purpose: past its memory limit (after its batch), or busy with
        nothing anyone waits for (killed)."""
        worker.ended_by_us = True
        self._forget(worker)
        log.warning("ner_worker_replaced", pid=worker.pid, reason=reason)
        self._on_restart(reason)
        if reason == "memory":
            self._background(self._stop(worker))
        else:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        self._background(self._replace())

    def _forget(self, worker: Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    async def _replace(self) -> None:
        for delay in (0.0, *RESTART_BACKOFF_S):
            if self._closing:
                return
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self._start_timeout):
                    worker = await self._spawn()
            except (WorkerStartFailed, TimeoutError, OSError) as exc:
                log.error("ner_worker_start_failed", reason=str(exc))  # noqa: TRY400 (no traceback: the reason says it)
                continue
            if self._closing:
                await self._stop(worker)
                return
            self._adopt(worker)
            return

    async def _stop(self, worker: Worker) -> None:
        process = worker.process
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()  # a worker ends when its input does
        try:
            async with asyncio.timeout(2):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    # --- jobs ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            worker = self._idle.pop()
            batch = [self._queue.popleft()]
            texts, chars = len(batch[0].texts), batch[0].size
            while self._queue and texts + len(self._queue[0].texts) <= BATCH_TEXTS \
                    and chars + self._queue[0].size <= BATCH_CHARS:
                job = self._queue.popleft()
                batch.append(job)
                texts, chars = texts + len(job.texts), chars + job.size
            worker.inflight = batch
            body = orjson.dumps({"texts": [t for job in batch for t in job.texts]})
            stdin = worker.process.stdin
            if stdin is None or stdin.is_closing():
                worker.inflight = []
                for job in batch:
                    _fail(job, "crashed")
                continue
            stdin.write(HEADER.pack(len(body)) + body)

    def _abandon(self, job: Job) -> None:
        """The request gave up (its time limit, or its client went away): drop it from the
        queue. A worker busy only with abandoned requests is killed if their work is big, so
        that it does not keep the pool waiting; a small batch is left to finish, which costs
        less than starting a worker again (seconds, while loading spaCy)."""
        if job in self._queue:
            self._queue.remove(job)
            return
        for worker in list(self._workers):
            if job in worker.inflight and all(j.future.done() for j in worker.inflight) \
                    and sum(j.size for j in worker.inflight) > ABANDONED_KILL_CHARS:
                self._end(worker, "timeout")

    def _background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _read(process: asyncio.subprocess.Process) -> Any:
    if process.stdout is None:
        raise ValueError("no output pipe")
    (length,) = HEADER.unpack(await process.stdout.readexactly(HEADER.size))
    if length > MAX_FRAME:
        raise ValueError("frame too large")
    return orjson.loads(await process.stdout.readexactly(length))


def _deliver(jobs: list[Job], spans: list[Any], cpu: float) -> None:
    """Each job its share of the answer, as it came (turned into spans by whoever waits for
    it, so that a big answer is not converted on the event loop), and its share of the CPU (by
    characters)."""
    total = sum(job.size for job in jobs) or 1
    at = 0
    for job in jobs:
        mine = spans[at:at + len(job.texts)]
        at += len(job.texts)
        if job.future.done():
            continue
        if len(mine) != len(job.texts):
            _fail(job, "error")
            continue
        job.future.set_result((mine, cpu * job.size / total))


def _spans(answer: list[Any]) -> list[list[Span]]:
    """The worker's `[start, end, entity, score]` lists as spans; DetectorFailed if they are
    not that."""
    try:
        return [[Span(int(s), int(e), str(kind), float(score), "presidio")
                 for s, e, kind, score in per_text] for per_text in answer]
    except (TypeError, ValueError):
        raise DetectorFailed("presidio", "error") from None


def _split(texts: Sequence[str], shares: int) -> list[list[str]]:
    """Consecutive groups of about equal characters (order kept, so results line up): each
    text goes to the share its middle falls in."""
    total = sum(len(t) for t in texts) or 1
    groups: list[list[str]] = [[] for _ in range(shares)]
    at = 0
    for text in texts:
        groups[min(shares - 1, int((at + len(text) / 2) * shares / total))].append(text)
        at += len(text)
    return [group for group in groups if group]


def _fail(job: Job, reason: str) -> None:
    """`reason`: crashed (its worker died), unavailable (the pool is closing) or error (the
    worker's answer was malformed)."""
    if not job.future.done():
        job.future.set_exception(DetectorFailed("presidio", reason))
