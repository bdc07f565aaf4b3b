"""Endorsements and collateral the evidence does not carry: TDX collateral from the operator's
folder (`intel_collateral_dir`, fully offline) when there is one, else fetched from the
configured AMD KDS and Intel PCS through the attestation transport and kept in an on-disk
cache, so a restart (or an outage of those services) does not stop attestation while what was
fetched is still valid.

Nothing fetched here is trusted for being fetched: VCEKs and collateral are verified against the
pinned roots like anything a backend sends. The cache is keyed by the URL; VCEKs are immutable
for a (chip, TCB) and kept for good, collateral until its nextUpdate, and so are the ARK's CRLs
(AMD KDS) and OCSP responses about NVIDIA's GPU certificates (the responder in the certificate's
AIA, asked by GET with no nonce, so one certificate is always the same URL, or by POST with a
nonce for a responder `ocsp_responders` names, NVIDIA's by default, as NVIDIA's SDK asks it),
and GPU RIMs from NVIDIA's RIM service until their certificates end. With a shared store
(gateway/state/shared_attestation.py) what one replica fetched is read by the others before
they ask the network: the disk first, then the shared store, then AMD KDS / Intel PCS.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509 import ocsp

from gateway.attestation.revocation import (
    CLOCK_SKEW,
    ocsp_nonce_echoed,
    ocsp_request,
    ocsp_request_url,
)
from gateway.attestation.rims import rim_not_after
from gateway.attestation.snp import SnpReport, Tcb
from gateway.attestation.tdx import (
    Collateral,
    TdxQuote,
    collateral_from_dir,
    pck_ca_kind,
    pck_fmspc,
)
from gateway.attestation.transport import Response, Transport
from gateway.errors import EvidenceError, FetchError
from gateway.settings import AttestationSettings, OcspResponder

MAX_BYTES = 1024 * 1024
TIMEOUT_S = 15.0
OCSP_NONCE_BYTES = 32  # as NVIDIA's SDK sends (RFC 8954: 1 to 32)
CRL_TTL_S = 3600.0  # CRLs: re-read hourly, so a revocation is seen soon
Expiry = Callable[[bytes, float], float | None]  # (body, now) -> cached until (None: for good)


class SharedCollateral(Protocol):
    """Where replicas leave what they fetched for each other; it never raises."""

    async def collateral(self, url: str,
                         now: float) -> tuple[bytes, bytes, float | None] | None:
        """(body, issuer chain, usable until: None for good), while usable at `now`."""
        ...

    async def keep_collateral(self, url: str, body: bytes, chain: bytes, until: float | None,
                              now: float) -> None: ...


def snp_products(report: SnpReport) -> list[str]:
    """The product line from the report's CPUID (v3 and later); every one for v2 reports."""
    if report.cpuid_family == 0x1A:
        return ["Turin"]
    if report.cpuid_family == 0x19 and len(report.raw) > 0x189:
        return ["Genoa"] if report.raw[0x189] >= 0x10 else ["Milan"]
    return ["Milan", "Genoa", "Turin"]


class CollateralStore:
    def __init__(self, settings: AttestationSettings, transport: Transport,
                 clock: Callable[[], float] = time.time,
                 shared: SharedCollateral | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._shared = shared
        self._cache = Path(settings.cache_dir) if settings.cache_dir else None

    async def vcek(self, report: SnpReport) -> bytes:
        base = self._settings.amd_kds_url
        if not base:
            raise EvidenceError("sev-snp: the evidence has no VCEK and no AMD KDS is configured")
        for product in snp_products(report):
            tcb = Tcb.from_bytes(report.reported_tcb_raw, turin=product == "Turin")
            hwid = report.chip_id[:8] if product == "Turin" else report.chip_id
            query = {"blSPL": tcb.bootloader, "teeSPL": tcb.tee, "snpSPL": tcb.snp,
                     "ucodeSPL": tcb.microcode}
            if tcb.fmc is not None:
                query["fmcSPL"] = tcb.fmc
            url = f"{base}/vcek/v1/{product}/{hwid.hex()}?{urllib.parse.urlencode(query)}"
            found = await self._get(url, expires=_forever)
            if found is not None:
                return found[0]
        raise EvidenceError("sev-snp: AMD KDS has no VCEK for this chip and TCB")

    async def amd_crl(self, product: str, kind: str) -> bytes:
        """The ARK's CRL for the VCEK or VLEK chain of a product line: the operator's file in
        `amd_roots_dir` (amd_<product>.crl, amd_<product>_vlek.crl) when there is one, else
        AMD KDS's, cached until its nextUpdate. Its signature and age are checked by the
        caller, whatever its source."""
        if self._settings.amd_roots_dir:
            suffix = "_vlek" if kind == "vlek" else ""
            path = Path(self._settings.amd_roots_dir) / f"amd_{product.lower()}{suffix}.crl"
            if path.is_file():
                return path.read_bytes()
        base = self._settings.amd_kds_url
        if not base:
            raise EvidenceError(f"sev-snp: no CRL for the {product} {kind.upper()} chain (no "
                                "file in amd_roots_dir and no AMD KDS configured)")
        found = await self._get(f"{base}/{kind}/v1/{product}/crl", expires=_crl_next_update)
        if found is None:
            raise EvidenceError(f"sev-snp: AMD KDS has no CRL for {product}")
        return found[0]

    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes:
        """The responder's answer about `cert`, cached until its nextUpdate; checked by the
        caller. Asked as `ocsp_responders` says for this responder (by default by GET, RFC
        6960 appendix A); a POST's answer is kept under "POST " and the GET URL the AIA's
        responder would have been asked (its nonce, once seen echoed, has done its job: the
        answer then holds until its nextUpdate like any other)."""
        how = _responder(self._settings.ocsp_responders, responder)
        target = how.url if how and how.url else responder
        if how is None or how.method == "get":
            found = await self._get(ocsp_request_url(cert, issuer, target),
                                    expires=_ocsp_next_update)
        else:
            nonce = how.nonce

            async def post() -> Response:
                return await self._post_ocsp(target, cert, issuer, nonce=nonce)

            found = await self._get("POST " + ocsp_request_url(cert, issuer, responder),
                                    expires=_ocsp_next_update, fetch=post)
        if found is None:
            raise EvidenceError(f"nvidia-gpu: the OCSP responder {target} answered 404")
        return found[0]

    async def _post_ocsp(self, url: str, cert: x509.Certificate, issuer: x509.Certificate, *,
                         nonce: bool) -> Response:
        sent = secrets.token_bytes(OCSP_NONCE_BYTES) if nonce else None
        response = await self._transport.post(
            url, ocsp_request(cert, issuer, sent), content_type="application/ocsp-request",
            timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES)
        if response.status == 200 and sent is not None \
                and not ocsp_nonce_echoed(response.body, sent):
            raise EvidenceError(f"nvidia-gpu: the OCSP responder {url} did not echo this "
                                "request's nonce (a replayed or cached answer)")
        return response

    async def rim(self, url: str) -> bytes | None:
        """A GPU RIM from NVIDIA's RIM service (JSON: the base64 XML in `rim`), cached until
        its certificates expire; None when the service has none. Verified by the caller."""
        found = await self._get(url, expires=_rim_not_after)
        return found[0] if found is not None else None

    async def tdx(self, quote: TdxQuote) -> Collateral:
        if self._settings.intel_collateral_dir:
            return collateral_from_dir(Path(self._settings.intel_collateral_dir), quote)
        base = self._settings.intel_pcs_url
        if not base:
            raise EvidenceError("tdx: no collateral with the quote, and neither "
                                "intel_collateral_dir nor intel_pcs_url is configured")
        fmspc = pck_fmspc(quote).hex()
        tcb = await self._required(f"{base}/tdx/certification/v4/tcb?fmspc={fmspc}",
                                   "TCB-Info-Issuer-Chain", "tcbInfo")
        identity = await self._required(f"{base}/tdx/certification/v4/qe/identity",
                                        "SGX-Enclave-Identity-Issuer-Chain", "enclaveIdentity")
        crl = await self._required(f"{base}/sgx/certification/v4/pckcrl?"
                                   f"ca={pck_ca_kind(quote)}&encoding=der",
                                   "SGX-PCK-CRL-Issuer-Chain", None)
        return Collateral(tcb[0].decode(), tcb[1], identity[0].decode(), identity[1],
                          pck_crl=crl[0])

    async def _required(self, url: str, chain_header: str,
                        json_name: str | None) -> tuple[bytes, bytes]:
        expires = _next_update(json_name) if json_name else _pck_crl_next_update
        found = await self._get(url, expires=expires, chain_header=chain_header)
        if found is None:
            raise EvidenceError(f"tdx: Intel PCS has no collateral at {url}")
        return found

    async def _get(self, url: str, *, expires: Expiry, chain_header: str | None = None,
                   fetch: Callable[[], Awaitable[Response]] | None = None,
                   ) -> tuple[bytes, bytes] | None:
        """(body, issuer chain) from the cache or the shared store while valid, else from the
        network: a GET of `url`, or `fetch` (then `url` is only the key it is kept under)."""
        cached = self._read_cache(url) or await self._read_shared(url)
        if cached is not None:
            return cached
        response = await fetch() if fetch is not None else await self._transport.get(
            url, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES)
        if response.status == 404:
            return None
        if response.status != 200:
            raise FetchError(f"collateral service answered {response.status} for {url}")
        chain = urllib.parse.unquote(response.headers.get((chain_header or "").lower(), ""))
        now = self._clock()
        until = expires(response.body, now)
        self._write_cache(url, response.body, chain.encode(), until)
        if self._shared is not None:
            await self._shared.keep_collateral(url, response.body, chain.encode(), until, now)
        return response.body, chain.encode()

    async def _read_shared(self, url: str) -> tuple[bytes, bytes] | None:
        """What another replica fetched, kept on this one's disk too (a restart without the
        shared store still finds it), until when that replica computed."""
        found = await self._shared.collateral(url, self._clock()) if self._shared else None
        if found is None:
            return None
        body, chain, until = found
        self._write_cache(url, body, chain, until)
        return body, chain

    def _path(self, url: str) -> Path | None:
        if self._cache is None:
            return None
        return self._cache / hashlib.sha256(url.encode()).hexdigest()

    def _read_cache(self, url: str) -> tuple[bytes, bytes] | None:
        path = self._path(url)
        if path is None or not path.is_file():
            return None
        try:  # a damaged entry is a miss: what it held is fetched again
            entry = json.loads(path.read_text())
            if entry["url"] != url or (entry["expires"] and entry["expires"] <= self._clock()):
                return None
            return bytes.fromhex(entry["body"]), bytes.fromhex(entry["chain"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_cache(self, url: str, body: bytes, chain: bytes, expires: float | None) -> None:
        path = self._path(url)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"url": url, "expires": expires, "body": body.hex(),
                                         "chain": chain.hex()}))
        temporary.replace(path)


def _responder(configured: Mapping[str, OcspResponder], url: str) -> OcspResponder | None:
    wanted = url.rstrip("/")
    return next((how for name, how in configured.items() if name.rstrip("/") == wanted), None)


def _forever(_: bytes, now: float) -> float | None:
    return None  # a VCEK certifies one chip at one TCB: it never changes


def _pck_crl_next_update(body: bytes, now: float) -> float | None:
    """Re-read hourly, and no later than the CRL's nextUpdate (past it, it would be refused)."""
    until = _crl_next_update(body, now)
    return min(until, now + CRL_TTL_S) if until is not None else now


def _next_update(json_name: str) -> Expiry:
    def expires(body: bytes, now: float) -> float | None:
        try:
            next_update = json.loads(body)[json_name]["nextUpdate"]
            return datetime.fromisoformat(str(next_update).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            return now + CRL_TTL_S

    return expires


def _crl_next_update(body: bytes, now: float) -> float | None:
    """Kept until the CRL's nextUpdate; one that does not parse or has none is not kept (it
    is refused, and asked for again next time)."""
    try:
        crl = x509.load_der_x509_crl(body)
    except ValueError:
        return now
    if crl.next_update_utc is None or _from_the_future(crl.last_update_utc, now):
        return now  # refused by the check: asked again next time, not held until nextUpdate
    return crl.next_update_utc.timestamp()


def _rim_not_after(body: bytes, now: float) -> float | None:
    """Kept until the first of its certificates ends; one that does not parse is not kept."""
    try:
        return rim_not_after(body).timestamp()
    except EvidenceError:
        return now


def _ocsp_next_update(body: bytes, now: float) -> float | None:
    """Kept until the response's nextUpdate; an unsuccessful answer (tryLater) is not kept."""
    try:
        singles = list(ocsp.load_der_ocsp_response(body).responses)
    except ValueError:
        return now
    if any(_from_the_future(single.this_update_utc, now) for single in singles):
        return now
    known = [s.next_update_utc.timestamp() for s in singles if s.next_update_utc is not None]
    return min(known) if known else now


def _from_the_future(this_update: datetime, now: float) -> bool:
    return this_update.timestamp() > now + CLOCK_SKEW.total_seconds()
