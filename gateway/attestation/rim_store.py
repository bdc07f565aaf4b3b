"""The RIMs that apply to a GPU being attested, obtained once per attestation for the sources
the trust levels name (files, or NVIDIA's RIM service through the collateral cache) and kept,
verified, so that verdicts are judged without I/O: again at a policy reload, like key sets.

Each certificate of a RIM's chain that NVIDIA's CAs issued is checked by OCSP (the responder in
the issuer's AIA, as for the GPU's own chain; answers cached until their nextUpdate), and the
RIM is relied on until the earliest nextUpdate, or its chain's end.

A RIM that cannot be had (no file for the version, the service down with nothing cached, a
signature or chain that does not verify, a revoked signer, another version than the GPU's) is
kept as the reason instead: every level that needs it is then unmet, with that reason (fail
closed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from gateway.attestation.levels import RimSource
from gateway.attestation.nvidia import GpuEvidence
from gateway.attestation.revocation import check_ocsp, ocsp_targets
from gateway.attestation.rims import (
    MAX_RIM_BYTES,
    GpuVersions,
    Rim,
    gpu_versions,
    rim_problems,
    verify_rim,
)
from gateway.errors import EvidenceError, FetchError

RimFetch = Callable[[str], Awaitable[bytes | None]]  # URL -> the service's answer (None: 404)
# (certificate, its issuer, responder URL) -> the DER OCSP response: CollateralStore.ocsp
OcspFetch = Callable[[x509.Certificate, x509.Certificate, str], Awaitable[bytes]]
Key = tuple[tuple[tuple[str, ...], str | None, str | None], str]  # (source, RIM id)


class RimStore:
    def __init__(self, fetch: RimFetch, root: x509.Certificate,
                 clock: Callable[[], float] = time.time, *, ocsp: OcspFetch | None) -> None:
        """`ocsp` None: the RIMs' revocation is not checked (`veil attest verify` only)."""
        self._fetch = fetch
        self._root = root
        self._clock = clock
        self._ocsp = ocsp
        self._found: dict[Key, Rim | str] = {}  # a verified RIM, or why there is none
        self._fetched: set[Key] = set()  # found ones from the service: kept until they end
        self._locks: dict[Key, asyncio.Lock] = {}  # one fetch at a time per RIM

    async def refresh(self, gpus: Iterable[GpuEvidence], sources: Iterable[RimSource]) -> None:
        """Obtain and verify the driver and VBIOS RIMs of these GPUs from every source, each
        RIM once however many GPUs run that version (files are read again each time; a RIM
        fetched from the service is kept until it ends). What they do not allow is for
        `references` to say, GPU by GPU."""
        wanted: dict[str, tuple[str, GpuVersions]] = {}  # RIM id -> (kind, versions)
        for gpu in gpus:
            try:
                versions = gpu_versions(gpu)
            except EvidenceError:
                continue  # `references` gives the reason
            for kind, rim_id in versions.rim_ids().items():
                wanted.setdefault(rim_id, (kind, versions))
        for source in {s.key(): s for s in sources}.values():
            for rim_id, (kind, versions) in wanted.items():
                key = (source.key(), rim_id)
                async with self._locks.setdefault(key, asyncio.Lock()):
                    await self._refresh_one(key, source, kind, versions)

    async def _refresh_one(self, key: Key, source: RimSource, kind: str,
                           versions: GpuVersions) -> None:
        now = self._clock()
        held = self._found.get(key)
        if key in self._fetched and isinstance(held, Rim) and held.not_after.timestamp() > now:
            return
        self._fetched.discard(key)
        at = datetime.fromtimestamp(now, UTC)
        try:
            found, fetched = await self._obtain(source, kind, versions, at)
            found = await self._not_revoked(found, source, at)
        except (EvidenceError, FetchError) as exc:
            self._found[key] = f"{kind} RIM {key[1]}: {exc}"
            return
        self._found[key] = found
        if fetched:
            self._fetched.add(key)

    def references(self, source: RimSource, gpu: GpuEvidence,
                   now: float) -> tuple[list[str], float]:
        """(what about the GPU's measurements its RIMs do not allow, until when the RIMs hold);
        problems and 0 when a RIM is missing, refused or expired."""
        try:
            versions = gpu_versions(gpu)
        except EvidenceError as exc:
            return [str(exc)], 0.0
        rims: dict[str, Rim] = {}
        problems = []
        for kind, rim_id in versions.rim_ids().items():
            found = self._found.get((source.key(), rim_id))
            if found is None:
                problems.append(f"the {kind} RIM {rim_id} has not been obtained yet")
            elif isinstance(found, str):
                problems.append(found)
            elif found.not_after.timestamp() <= now:
                problems.append(f"the {kind} RIM {rim_id} expired {found.not_after.date()}")
            else:
                rims[kind] = found
        problems += rim_problems(gpu, rims)  # the RIMs at hand are compared all the same
        if problems:
            return problems, 0.0
        return [], min(r.not_after.timestamp() for r in rims.values())

    async def _not_revoked(self, rim: Rim, source: RimSource, at: datetime) -> Rim:
        """The RIM relied on until its OCSP answers' earliest nextUpdate, if that is sooner."""
        if self._ocsp is None:
            return rim
        ends = [rim.not_after]
        for cert, issuer, responder in ocsp_targets(rim.chain, self._root_of(source)):
            response = await self._ocsp(cert, issuer, responder)
            ends.append(check_ocsp(response, cert, issuer, at, prefix="nvidia-rim"))
        return replace(rim, not_after=min(ends))

    def _root_of(self, source: RimSource) -> x509.Certificate:
        return _load_root(source.root) if source.root else self._root

    async def _obtain(self, source: RimSource, kind: str, versions: GpuVersions,
                      at: datetime) -> tuple[Rim, bool]:
        """The RIM, and whether it came from the service (else from a file)."""
        root = self._root_of(source)
        version = versions.version(kind).lower()
        # Verifying a RIM takes ~13 ms: off the event loop, which serves requests meanwhile.
        from_files = await asyncio.to_thread(_from_files, source.files, root, at)
        matching = [rim for rim in from_files if rim.version.lower() == version]
        if len(matching) > 1:
            raise EvidenceError(f"more than one RIM file is for {kind} version {version}")
        if matching:
            return matching[0], False
        rim_id = versions.rim_ids()[kind]
        if source.url is None:
            raise EvidenceError(f"no RIM file is for {kind} version {version}")
        body = await self._fetch(source.url.rstrip("/") + "/" + rim_id)
        if body is None:
            raise EvidenceError("the RIM service has no such RIM")
        rim = await asyncio.to_thread(verify_rim, body, root, at)
        if rim.version.lower() != version:
            raise EvidenceError(f"the RIM is for version {rim.version}, the GPU runs {version}")
        return rim, True


def offline_rim_problems(gpu: GpuEvidence, source: RimSource, root: x509.Certificate,
                         at: datetime) -> list[str]:
    """`veil attest verify`: the source's RIM files only; neither a RIM service nor an OCSP
    responder is asked (the RIMs' revocation is not checked offline)."""
    async def offline(url: str) -> bytes | None:
        raise FetchError("not fetched offline: give the RIM as a file under rims.files")

    store = RimStore(offline, root, at.timestamp, ocsp=None)
    asyncio.run(store.refresh([gpu], [source]))
    return store.references(source, gpu, at.timestamp())[0]


def _from_files(paths: Iterable[str], root: x509.Certificate, at: datetime) -> list[Rim]:
    """Every file must verify: one that does not is an operator's mistake, refused by name."""
    rims = []
    for name in paths:
        path = Path(name)
        try:
            with path.open("rb") as file:
                body = file.read(2 * MAX_RIM_BYTES + 1)  # the JSON wrapper's base64 is longer
        except OSError:
            raise EvidenceError(f"RIM file {path.name} cannot be read") from None
        try:
            rims.append(verify_rim(body, root, at))
        except EvidenceError as exc:
            raise EvidenceError(f"RIM file {path.name}: {exc}") from None
    return rims


def _load_root(path: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        raise EvidenceError(f"the RIM root {Path(path).name} cannot be read") from None
