"""The audit trail: one JSON line per request, append-only, tamper-evident.

Each record carries `seq`, `prev` (SHA-256 of the previous line, or 64 zeros for the first
record ever) and `mac` (HMAC-SHA256 of the record without `mac`, under the audit key). Editing
a record breaks its MAC; deleting, inserting or reordering records breaks `prev`/`seq`; forging
a consistent chain needs the key. Rotation by size renames the file (`audit.jsonl.1`, ...) and
the next file's first record points at the last line of the previous one, so the chain spans
rotations: `veil audit verify audit.jsonl.2 audit.jsonl.1 audit.jsonl` checks it whole.

With the key in an HSM (`audit.key_hsm_label`) the token computes every MAC and the key never
enters memory; each record then names the key version that made it (`kid`, e.g.
`veil-audit.v2`), so records made before a rotation verify under their own version.

What it cannot show on its own: records cut from the very end (nothing follows them). Ship the
file to write-once storage if that matters; the last `seq` is also in the gateway's own log
(`audit_trail_closed`, and `audit_trail_opened` with the next one).

Records hold facts about a request (who, which route and model, which policy, what kinds of
data were found and how many, what was decided and why, where it went, how long each stage
took), never a value from the request or the reply.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.keys.material import MemorySigner, Signer
from gateway.observability.logging import get_logger

GENESIS = "0" * 64
log = get_logger("veil.audit")


def _canonical(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def _mac(signer: Signer, record: Mapping[str, Any]) -> str:
    """Under the version the record names (`kid`), else the signer's one key."""
    body = {k: v for k, v in record.items() if k != "mac"}
    kid = body.get("kid")
    return signer.sign(_canonical(body), kid if isinstance(kid, str) else None).hex()


def load_key(path: str | Path | None = None, env: str | None = None,
             environ: Mapping[str, str] | None = None) -> bytes:
    """The audit key from an environment variable or a file (hex or raw, at least 16 bytes)."""
    values = os.environ if environ is None else environ
    raw = values.get(env, "").encode() if env else Path(path or "").read_bytes().strip()
    if len(raw) < 16:
        raise ValueError("the audit key must hold at least 16 bytes")
    return raw


class AuditLog:
    def __init__(self, path: str | Path, key: bytes | Signer, *,
                 max_bytes: int = 50 * 1024 * 1024, keep: int = 10) -> None:
        self.path = Path(path)
        self._signer = MemorySigner(key) if isinstance(key, bytes) else key
        self._max_bytes = max_bytes
        self._keep = keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev, self._seq = self._resume()
        self._file = self.path.open("ab")

    def _resume(self) -> tuple[str, int]:
        """Continue the chain from the newest existing line (this file or the last rotated)."""
        for candidate in (self.path, self.path.with_name(self.path.name + ".1")):
            last = _last_line(candidate)
            if last:
                record = orjson.loads(last)
                return hashlib.sha256(last).hexdigest(), int(record["seq"]) + 1
        return GENESIS, 0

    @property
    def last_seq(self) -> int:
        return self._seq - 1

    def append(self, facts: Mapping[str, Any]) -> None:
        record = {"seq": self._seq, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                  **facts, "prev": self._prev}
        if self._signer.key_id is not None:
            record["kid"] = self._signer.key_id
        record["mac"] = _mac(self._signer, record)  # a token failing: nothing written
        line = _canonical(record)
        self._file.write(line + b"\n")
        self._file.flush()
        self._prev = hashlib.sha256(line).hexdigest()
        self._seq += 1
        if self._file.tell() >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self._keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._file = self.path.open("ab")

    def close(self) -> None:
        self._file.close()


def _last_line(path: Path) -> bytes | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        position = f.tell()
        chunk = b""
        while position > 0 and chunk.count(b"\n") < 2:
            step = min(4096, position)
            position -= step
            f.seek(position)
            chunk = f.read(step) + chunk
    lines = [line for line in chunk.split(b"\n") if line.strip()]
    return lines[-1] if lines else None


class AuditTrail:
    """The app's handle: opened with the app (cleanup_ctx), absent when audit is disabled."""

    def __init__(self, path: str | Path, signer: Callable[[], Signer], max_bytes: int,
                 keep: int) -> None:
        """`signer`: called when the trail opens (the key is read, or the token's key found,
        then: with the app, not before)."""
        self._args = (path, signer, max_bytes, keep)
        self.log: AuditLog | None = None

    def open(self) -> None:
        path, signer, max_bytes, keep = self._args
        self.log = AuditLog(path, signer(), max_bytes=max_bytes, keep=keep)
        log.info("audit_trail_opened", path=str(self.log.path), next_seq=self.log.last_seq + 1)

    def close(self) -> None:
        """The last `seq` goes to the gateway's own log: records cut from the end of the file
        leave no trace in it, but this line says where it ended."""
        if self.log is not None:
            log.info("audit_trail_closed", path=str(self.log.path), last_seq=self.log.last_seq)
            self.log.close()
            self.log = None

    def append(self, facts: Mapping[str, Any]) -> None:
        if self.log is None:
            raise RuntimeError("audit trail is not open")
        self.log.append(facts)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    message: str


def verify(files: Iterable[str | Path], key: bytes | Signer) -> Verdict:
    """Check MACs, `seq` and `prev` across files given oldest first; name the first break."""
    signer = MemorySigner(key) if isinstance(key, bytes) else key
    prev: str | None = None
    seq: int | None = None
    count = 0
    start = ""
    for where, line in _lines(files):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return Verdict(False, count, f"{where}: not a JSON record (damaged or edited)")
        try:
            expected = _mac(signer, record)
        except LookupError as exc:
            return Verdict(False, count, f"{where}: {exc}")
        if not hmac.compare_digest(str(record.get("mac", "")), expected):
            return Verdict(False, count, f"{where}: MAC mismatch: the record was edited, or "
                                         "written under another key")
        if prev is None:
            if record.get("prev") != GENESIS:
                start = f"{where}: chain starts at seq {record.get('seq')} (earlier files not "
                start += "given)"
        elif record.get("prev") != prev or record.get("seq") != (seq or 0) + 1:
            return Verdict(False, count, f"{where}: chain broken after seq {seq}: a record was "
                                         "deleted, inserted or reordered here")
        prev, seq = hashlib.sha256(line).hexdigest(), int(record["seq"])
        count += 1
    if count == 0:
        return Verdict(False, 0, "no records")
    note = f" ({start})" if start else ""
    return Verdict(True, count, f"{count} records verified, last seq {seq}{note}")


CHAIN_FILE = re.compile(r"(?P<chain>.+\.jsonl)(?:\.(?P<rotated>\d+))?")


def chains(directory: str | Path) -> dict[str, list[Path]]:
    """The chains kept in a directory (one per replica and worker: `audit.<replica>.w0.jsonl`),
    each as its files oldest first (`.jsonl.3`, `.jsonl.2`, `.jsonl.1`, `.jsonl`)."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in Path(directory).iterdir():
        match = CHAIN_FILE.fullmatch(path.name)
        if match and path.is_file():
            found.setdefault(match["chain"], []).append((int(match["rotated"] or 0), path))
    return {chain: [p for _, p in sorted(files, key=lambda f: -f[0])]
            for chain, files in sorted(found.items())}


def _lines(files: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    for file in files:
        with Path(file).open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{file}:{number}", line.rstrip(b"\n")
