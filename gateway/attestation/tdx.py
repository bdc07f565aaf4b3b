"""Intel TDX quotes (v4 and v5): verify them to the pinned Intel SGX root with Intel's signed
collateral, then check the measured values against what a trust level demands.

Quote (Intel TDX DCAP Quote Generation Library, "Quote Format"): a 48-byte header, the TD report
body (v4: 584 bytes; v5: a type/size descriptor, then 584 or, for TDX 1.5, 648 bytes), then the
signature data: an ECDSA P-256 signature over header+body by the attestation key, the key, and
certification data holding the QE report, its signature by the PCK key, the QE authentication
data and the PCK certificate chain.

Checks, in order: PCK chain to the pinned root (and the CRLs when given); QE report signed by
the PCK key; QE report_data = SHA-256(attestation key || QE auth data); the quote signature;
TCB Info and QE Identity signed by Intel's TCB signing key (chained to the same root), not past
their nextUpdate, for this platform's FMSPC; the TDX module's signer and attributes against
the identity Intel lists for its major version; then the TCB status of the platform, of the TDX
module and of the QE.

TCB Info v3 (Intel PCS API, "TDX TCB Info"; Intel's QVL TcbLevelCheck/TdxModuleCheck) describes
the TDX module apart from the platform: TEE_TCB_SVN[1] is the module's major version and
TEE_TCB_SVN[0] its SVN. Version 0 is checked against `tdxModule` alone; a later version against
`tdxModuleIdentities["TDX_<version as 2 hex digits>"]`, whose own tcbLevels (by isvsvn) give the
module's status, and the platform's levels then skip those two bytes. The verdict's status is the
two converged the way Intel's QVL does it: a revoked module revokes, an out-of-date one makes an
up-to-date platform out of date.

TD relaunch (TDX module 1.5+, Intel's QVL TDRelaunchCheck, quote verification step 4.1.2.4.17.4.3):
after TD-preserving module updates a TD keeps running on a newer module than the one it was
launched under. Its TD report 1.5 body (a v5 quote, body type 3) carries both: TEE_TCB_SVN is
the one the TD was launched under (all the checks above read it), TEE_TCB_SVN2 the one running
now. When the quoting enclave is not out of date, revoked or unsupported, the SGX part of the
platform is UpToDate, SWHardeningNeeded, ConfigurationNeeded or ConfigurationAndSWHardeningNeeded,
the status is OutOfDate or OutOfDateConfigurationNeeded and the launch module is OutOfDate, the
running module is compared with Intel's latest: its SVN (TEE_TCB_SVN2[0]) against the newest
isvsvn of the identity its major version (TEE_TCB_SVN2[1]) names (for version 0, against the
newest TCB level's first TDX component), and TEE_TCB_SVN2[2] against that level's third. At or
above both, the status is `TDRelaunchAdvised` (`TDRelaunchAdvisedConfigurationNeeded` when a
configuration is needed): relaunching the TD would bring it up to date. Otherwise it stays
OutOfDate. A running module whose major version Intel does not list is refused (QVL's
TDX_MODULE_MISMATCH); one whose identity lists no level is TcbNotSupported. "Newest TCB level"
is the first Intel lists (PCS lists them newest first; the platform's match reads them so too).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.attestation.chains import verify_chain
from gateway.attestation.revocation import check_crl
from gateway.errors import EvidenceError

HEADER_SIZE = 48
BODY_V4_SIZE = 584
BODY_15_SIZE = 648
TDX_TEE = 0x81
ECDSA_P256 = 2
QE_REPORT_SIZE = 384
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
TD_ATTRIBUTES_DEBUG = 1 << 0
TCB_NOT_SUPPORTED = "TcbNotSupported"  # below every level Intel lists: only a policy can accept
MODULE_STATUSES = ("UpToDate", "OutOfDate", "Revoked")  # what a module's tcbLevels may say
BODY_TD_REPORT15 = 3  # v5 body type of a TD report 1.5 (TDX module 1.5+): has TEE_TCB_SVN2
RELAUNCH_ADVISED = "TDRelaunchAdvised"
RELAUNCH_ADVISED_CONFIGURATION = "TDRelaunchAdvisedConfigurationNeeded"
_CONFIGURATION_NEEDED = ("ConfigurationNeeded", "OutOfDateConfigurationNeeded",
                         "ConfigurationAndSWHardeningNeeded", RELAUNCH_ADVISED_CONFIGURATION)


@dataclass(frozen=True)
class TdReport:
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None  # TD report 1.5: the TDX module running now

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes & TD_ATTRIBUTES_DEBUG)


@dataclass(frozen=True)
class TdxQuote:
    version: int
    signed: bytes  # header and body, as signed
    report: TdReport
    signature: bytes  # DER ECDSA
    attestation_key: bytes  # 64 bytes, x || y
    qe_report: bytes
    qe_report_signature: bytes  # DER ECDSA
    qe_auth_data: bytes
    pck_chain: list[x509.Certificate]


def parse_quote(raw: bytes) -> TdxQuote:
    reader = _Reader(raw)
    version, key_type, tee_type = struct.unpack("<HHI", reader.take(8))
    if version not in (4, 5):
        raise EvidenceError(f"tdx: quote version {version} is not supported (4, 5)")
    if key_type != ECDSA_P256 or tee_type != TDX_TEE:
        raise EvidenceError(f"tdx: not an ECDSA P-256 TDX quote (key type {key_type}, "
                            f"TEE type {tee_type:#x})")
    reader.take(HEADER_SIZE - 8)
    body_size = BODY_V4_SIZE
    if version == 5:
        body_type, body_size = struct.unpack("<HI", reader.take(6))
        if (body_type, body_size) not in ((2, BODY_V4_SIZE), (3, BODY_15_SIZE)):
            raise EvidenceError(f"tdx: unknown v5 body type {body_type} of {body_size} bytes")
    report = _td_report(reader.take(body_size), body_size == BODY_15_SIZE)
    signed = raw[:reader.offset]
    (signature_size,) = struct.unpack("<I", reader.take(4))
    signature_data = _Reader(reader.take(signature_size))
    signature = _der_signature(signature_data.take(64))
    attestation_key = signature_data.take(64)
    cert_type, cert_size = struct.unpack("<HI", signature_data.take(6))
    if cert_type != CERT_DATA_QE_REPORT:
        raise EvidenceError(f"tdx: certification data type {cert_type}, expected QE report")
    certification = _Reader(signature_data.take(cert_size))
    qe_report = certification.take(QE_REPORT_SIZE)
    qe_report_signature = _der_signature(certification.take(64))
    (auth_size,) = struct.unpack("<H", certification.take(2))
    qe_auth_data = certification.take(auth_size)
    inner_type, inner_size = struct.unpack("<HI", certification.take(6))
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise EvidenceError(f"tdx: certification data type {inner_type}, expected a PCK chain")
    try:
        chain = x509.load_pem_x509_certificates(certification.take(inner_size).rstrip(b"\0"))
    except ValueError:
        raise EvidenceError("tdx: the PCK certificate chain does not parse") from None
    return TdxQuote(version, signed, report, signature, attestation_key, qe_report,
                    qe_report_signature, qe_auth_data, chain)


def _td_report(body: bytes, td15: bool) -> TdReport:
    def field(offset: int, size: int) -> bytes:
        return body[offset:offset + size]

    rtmrs = (field(328, 48), field(376, 48), field(424, 48), field(472, 48))
    return TdReport(
        tee_tcb_svn=field(0, 16), mrseam=field(16, 48), mrsignerseam=field(64, 48),
        seam_attributes=field(112, 8),
        td_attributes=int.from_bytes(field(120, 8), "little"),
        xfam=int.from_bytes(field(128, 8), "little"), mrtd=field(136, 48),
        mrconfigid=field(184, 48), mrowner=field(232, 48), mrownerconfig=field(280, 48),
        rtmrs=rtmrs, report_data=field(520, 64), tee_tcb_svn2=field(584, 16) if td15 else None)


@dataclass(frozen=True)
class Collateral:
    """Intel's signed collateral, as PCS serves it: the JSON texts exactly as received (the
    signature covers their bytes), the issuer chains, and optionally the CRLs (DER)."""

    tcb_info: str
    tcb_info_chain: bytes
    qe_identity: str
    qe_identity_chain: bytes
    pck_crl: bytes | None = None
    root_crl: bytes | None = None


@dataclass(frozen=True)
class TdxModuleStatus:
    identity: str  # "tdxModule" (major version 0) or the TDX_<nn> identity that applied
    tcb_status: str


@dataclass(frozen=True)
class VerifiedTdx:
    quote: TdxQuote
    fmspc: str
    tcb_status: str  # the platform's and the TDX module's, converged
    qe_tcb_status: str  # the quoting enclave's, from QE Identity
    next_update: datetime  # the earliest of the collateral's and its CRLs'
    platform_tcb_status: str  # from TCB Info's tcbLevels alone
    module: TdxModuleStatus
    relaunch_advised: bool = False  # TEE_TCB_SVN2 is current: the status says TDRelaunchAdvised

    def values(self) -> dict[str, Any]:
        report = self.quote.report
        return {"format": "tdx", "version": self.quote.version, "fmspc": self.fmspc,
                "tcb_status": self.tcb_status, "qe_tcb_status": self.qe_tcb_status,
                "platform_tcb_status": self.platform_tcb_status,
                "tdx_module": self.module.identity,
                "tdx_module_tcb_status": self.module.tcb_status,
                "mrtd": report.mrtd.hex(), "mrseam": report.mrseam.hex(),
                "rtmr0": report.rtmrs[0].hex(), "rtmr1": report.rtmrs[1].hex(),
                "rtmr2": report.rtmrs[2].hex(), "rtmr3": report.rtmrs[3].hex(),
                "mrconfigid": report.mrconfigid.hex(), "debug": report.debug,
                "tee_tcb_svn": report.tee_tcb_svn.hex(),
                **({"tee_tcb_svn2": report.tee_tcb_svn2.hex()}
                   if report.tee_tcb_svn2 is not None else {})}


def pck_fmspc(quote: TdxQuote) -> bytes:
    """The platform's FMSPC, from its PCK certificate: which TCB Info applies."""
    fmspc: bytes = _sgx_extensions(quote.pck_chain[0])["fmspc"]
    return fmspc


def pck_ca_kind(quote: TdxQuote) -> str:
    """Which PCK CA issued the platform's certificate ("processor" or "platform"): whose CRL
    applies."""
    issuer = quote.pck_chain[1].subject.rfc4514_string() if len(quote.pck_chain) > 1 else ""
    return "processor" if "Processor" in issuer else "platform"


def collateral_from_dir(folder: Path, quote: TdxQuote) -> Collateral:
    """Collateral saved from Intel PCS (or a PCCS) under the names PCS uses:
    tcb_info_<fmspc>.json (+ _chain.pem), qe_identity.json (+ _chain.pem), and optionally
    pck_crl_platform.crl / pck_crl_processor.crl and root_ca.crl (DER)."""
    fmspc = pck_fmspc(quote).hex()
    kind = pck_ca_kind(quote)

    def optional(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.is_file() else None

    try:
        return Collateral(
            tcb_info=(folder / f"tcb_info_{fmspc}.json").read_text(),
            tcb_info_chain=(folder / f"tcb_info_{fmspc}_chain.pem").read_bytes(),
            qe_identity=(folder / "qe_identity.json").read_text(),
            qe_identity_chain=(folder / "qe_identity_chain.pem").read_bytes(),
            pck_crl=optional(f"pck_crl_{kind}.crl"), root_crl=optional("root_ca.crl"))
    except OSError as exc:
        raise EvidenceError(f"tdx: no collateral for FMSPC {fmspc} in {folder} "
                            f"({exc.strerror})") from None


def collateral_from_json(part: Mapping[str, Any]) -> Collateral:
    """Collateral sent with the evidence (it is signed by Intel, so its carrier need not be
    trusted): {"tcb_info": <JSON text>, "tcb_info_chain": <PEM>, "qe_identity": <JSON text>,
    "qe_identity_chain": <PEM>, "pck_crl": <base64 DER>, "root_crl": <base64 DER>}."""
    try:
        return Collateral(
            tcb_info=str(part["tcb_info"]), tcb_info_chain=str(part["tcb_info_chain"]).encode(),
            qe_identity=str(part["qe_identity"]),
            qe_identity_chain=str(part["qe_identity_chain"]).encode(),
            pck_crl=base64.b64decode(part["pck_crl"]) if part.get("pck_crl") else None,
            root_crl=base64.b64decode(part["root_crl"]) if part.get("root_crl") else None)
    except (KeyError, TypeError, binascii.Error):
        raise EvidenceError("tdx: collateral needs tcb_info, qe_identity and their "
                            "chains") from None


def collateral_json(collateral: Collateral) -> dict[str, str]:
    """The inverse of `collateral_from_json`: what an agent sends with its quote."""
    out = {"tcb_info": collateral.tcb_info,
           "tcb_info_chain": collateral.tcb_info_chain.decode(),
           "qe_identity": collateral.qe_identity,
           "qe_identity_chain": collateral.qe_identity_chain.decode()}
    for name, crl in (("pck_crl", collateral.pck_crl), ("root_crl", collateral.root_crl)):
        if crl is not None:
            out[name] = base64.b64encode(crl).decode()
    return out


@cache
def intel_root() -> x509.Certificate:
    data = (resources.files("gateway.attestation") / "roots" / "intel_sgx_root.pem").read_bytes()
    return x509.load_pem_x509_certificate(data)


def verify_quote_signatures(raw: bytes, *, at: datetime,
                            root: x509.Certificate | None = None) -> TdxQuote:
    """The quote's own proofs: PCK chain to the root, the QE report signed by the PCK key and
    binding the attestation key, the quote signed by that key. Not enough to trust a TD: the
    TCB status needs Intel's collateral (`verify_quote`)."""
    quote = parse_quote(raw)
    _verify_chain(quote.pck_chain, root or intel_root(), at, "PCK")
    pck = quote.pck_chain[0]
    _verify(pck.public_key(), quote.qe_report_signature, quote.qe_report, "QE report")
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    if quote.qe_report[320:352] != expected or any(quote.qe_report[352:384]):
        raise EvidenceError("tdx: the QE report does not vouch for this attestation key")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                       b"\x04" + quote.attestation_key)
    _verify(key, quote.signature, quote.signed, "quote")
    return quote


def verify_quote(raw: bytes, collateral: Collateral, *, at: datetime,
                 root: x509.Certificate | None = None) -> VerifiedTdx:
    root = root or intel_root()
    quote = verify_quote_signatures(raw, at=at, root=root)
    pck = quote.pck_chain[0]
    crls_next = _check_crls(collateral, quote.pck_chain, root, at)
    extensions = _sgx_extensions(pck)
    tcb_info, tcb_next = _signed_json(collateral.tcb_info, "tcbInfo",
                                      collateral.tcb_info_chain, root, at)
    identity, qe_next = _signed_json(collateral.qe_identity, "enclaveIdentity",
                                     collateral.qe_identity_chain, root, at)
    fmspc = extensions["fmspc"].hex()
    if str(tcb_info.get("fmspc", "")).lower() != fmspc or tcb_info.get("id") != "TDX":
        raise EvidenceError(f"tdx: TCB Info is for FMSPC {tcb_info.get('fmspc')} "
                            f"({tcb_info.get('id')}), the platform is {fmspc} (TDX)")
    module = _module_status(tcb_info, quote.report)
    platform = _platform_status(tcb_info, extensions, quote.report)
    qe_status = _qe_status(identity, quote.qe_report)
    launched = _converge(platform, module.tcb_status)
    status = launched if quote.report.tee_tcb_svn2 is None else _relaunch_status(
        tcb_info, quote.report.tee_tcb_svn2, sgx=_sgx_status(tcb_info, extensions),
        tdx=launched, module=module.tcb_status, qe=qe_status)
    advised = status in (RELAUNCH_ADVISED, RELAUNCH_ADVISED_CONFIGURATION)
    return VerifiedTdx(quote, fmspc, status, qe_status, min(tcb_next, qe_next, *crls_next),
                       platform, module, relaunch_advised=advised)


def _verify_chain(chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime,
                  what: str) -> None:
    verify_chain(chain, root, at, prefix="tdx", root_label="Intel", what=f"{what} ")


_LABELS = ("pck", "pck ca", "root ca")  # how a revoked certificate of a PCK chain is named


def _check_crls(collateral: Collateral, chain: Sequence[x509.Certificate],
                root: x509.Certificate, at: datetime) -> list[datetime]:
    """The CRLs given list none of the chain; answers their nextUpdates (the verdict must lapse
    by the first of them, so the platform is judged again against a fresh CRL)."""
    labelled = {_LABELS[i] if i < len(_LABELS) else f"certificate {i}": c
                for i, c in enumerate(chain)}
    return [check_crl(crl_der, issuer, labelled, at, prefix="tdx")
            for crl_der, issuer in ((collateral.pck_crl, chain[1] if len(chain) > 1 else root),
                                    (collateral.root_crl, root))
            if crl_der is not None]


def _verify(key: Any, signature: bytes, data: bytes, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EvidenceError(f"tdx: the {what} key is not an EC key")
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EvidenceError(f"tdx: {what} signature does not verify") from None


def _signed_json(text: str, name: str, chain_pem: bytes, root: x509.Certificate,
                 at: datetime) -> tuple[dict[str, Any], datetime]:
    """Intel signs the exact bytes of the inner object: verify them before trusting a field."""
    try:
        document = json.loads(text)
        signature = bytes.fromhex(document["signature"])
        start = text.index(f'"{name}":') + len(name) + 3
        end = text.rindex(',"signature"')
        chain = x509.load_pem_x509_certificates(chain_pem)
    except (ValueError, KeyError, TypeError):
        raise EvidenceError(f"tdx: {name} collateral is malformed") from None
    _verify_chain(chain, root, at, f"{name} signing")
    if len(signature) != 64:
        raise EvidenceError(f"tdx: {name} signature has {len(signature)} bytes")
    _verify(chain[0].public_key(), _der_signature(signature), text[start:end].encode(), name)
    body: dict[str, Any] = document[name]
    next_update = datetime.fromisoformat(str(body["nextUpdate"]).replace("Z", "+00:00"))
    if at > next_update:
        raise EvidenceError(f"tdx: {name} collateral expired at {body['nextUpdate']}")
    return body, next_update


def _platform_status(tcb_info: Mapping[str, Any], extensions: Mapping[str, Any],
                     report: TdReport) -> str:
    """The first TCB level (newest first) the platform is at or above decides its status; a
    platform below all of them is `TcbNotSupported` (Intel's QVL refuses it; so does every
    trust level that does not list that status). With a module of major version 1 or more, the
    first two TEE_TCB_SVN bytes are the module's, judged by its identity instead."""
    skip = 2 if report.tee_tcb_svn[1] > 0 else 0
    for level in tcb_info.get("tcbLevels", []):
        tcb = level["tcb"]
        sgx = [c["svn"] for c in tcb["sgxtcbcomponents"]]
        tdx = [c["svn"] for c in tcb.get("tdxtcbcomponents", [])]
        if all(have >= need for have, need in zip(extensions["cpusvn"], sgx, strict=False)) \
                and extensions["pcesvn"] >= tcb["pcesvn"] \
                and all(have >= need for have, need in zip(report.tee_tcb_svn[skip:],
                                                           tdx[skip:], strict=False)):
            return str(level["tcbStatus"])
    return TCB_NOT_SUPPORTED


def _sgx_status(tcb_info: Mapping[str, Any], extensions: Mapping[str, Any]) -> str:
    """The first TCB level the platform's SGX part (CPU SVN, PCE SVN) alone is at or above."""
    for level in tcb_info.get("tcbLevels", []):
        tcb = level["tcb"]
        sgx = [c["svn"] for c in tcb["sgxtcbcomponents"]]
        if all(have >= need for have, need in zip(extensions["cpusvn"], sgx, strict=False)) \
                and extensions["pcesvn"] >= tcb["pcesvn"]:
            return str(level["tcbStatus"])
    return TCB_NOT_SUPPORTED


def _relaunch_status(tcb_info: Mapping[str, Any], svn2: bytes, *, sgx: str, tdx: str,
                     module: str, qe: str) -> str:
    """`tdx` (the status at launch), or TDRelaunchAdvised when the module running now is
    Intel's latest and relaunching would cure it (the module docstring says when)."""
    if qe in ("OutOfDate", "Revoked", TCB_NOT_SUPPORTED) or sgx not in (
            "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded") \
            or tdx not in ("OutOfDate", "OutOfDateConfigurationNeeded") or module != "OutOfDate":
        return tdx
    try:
        current = _running_is_latest(tcb_info, svn2)
    except (KeyError, TypeError, ValueError, IndexError):
        raise EvidenceError("tdx: TCB Info's levels are malformed") from None
    if current is None:
        return TCB_NOT_SUPPORTED
    if not current:
        return tdx
    return RELAUNCH_ADVISED_CONFIGURATION if sgx in _CONFIGURATION_NEEDED \
        or tdx in _CONFIGURATION_NEEDED else RELAUNCH_ADVISED


def _running_is_latest(tcb_info: Mapping[str, Any], svn2: bytes) -> bool | None:
    """Whether TEE_TCB_SVN2 is at Intel's newest module SVN and newest TDX component 2 (None:
    Intel lists no level to compare with)."""
    levels = tcb_info.get("tcbLevels") or []
    if not levels:
        return None
    latest = [int(c["svn"]) for c in levels[0]["tcb"]["tdxtcbcomponents"]]
    if svn2[1] == 0:
        return svn2[0] >= latest[0] and svn2[2] >= latest[2]
    name = f"TDX_{svn2[1]:02X}"
    running = next((m for m in tcb_info.get("tdxModuleIdentities") or []
                    if isinstance(m, dict) and str(m.get("id", "")).upper() == name), None)
    if running is None:
        raise EvidenceError(f"tdx: TCB Info lists no TDX module identity {name} for the module "
                            "the TD runs on now (TEE_TCB_SVN2)")
    if not running.get("tcbLevels"):
        return None
    newest = max(int(level["tcb"]["isvsvn"]) for level in running["tcbLevels"])
    return svn2[0] >= newest and svn2[2] >= latest[2]


def _module_status(tcb_info: Mapping[str, Any], report: TdReport) -> TdxModuleStatus:
    """The TDX module's identity (signer and attributes) checked, and its own TCB status: a
    module Intel does not list, or signed by another key, is refused outright."""
    version, svn = report.tee_tcb_svn[1], report.tee_tcb_svn[0]
    if version == 0:
        wanted, name = tcb_info.get("tdxModule"), "tdxModule"
    else:
        name = f"TDX_{version:02X}"
        wanted = next((m for m in tcb_info.get("tdxModuleIdentities") or []
                       if isinstance(m, dict) and str(m.get("id", "")).upper() == name), None)
    if not isinstance(wanted, dict):
        raise EvidenceError(f"tdx: TCB Info lists no TDX module identity {name} (the quote's "
                            f"TDX module is major version {version})")
    try:
        mrsigner = bytes.fromhex(str(wanted["mrsigner"]))
        attributes = bytes.fromhex(str(wanted["attributes"]))
        mask = bytes.fromhex(str(wanted["attributesMask"]))
    except (KeyError, ValueError):
        raise EvidenceError(f"tdx: TCB Info's {name} is malformed") from None
    if mrsigner != report.mrsignerseam:
        raise EvidenceError(f"tdx: the TDX module's signer (MRSIGNERSEAM "
                            f"{report.mrsignerseam.hex()[:16]}...) is not the one Intel lists "
                            f"for {name}")
    masked = bytes(a & m for a, m in zip(report.seam_attributes, mask, strict=False))
    if len(mask) != len(report.seam_attributes) or masked != attributes:
        raise EvidenceError(f"tdx: the TDX module's SEAM attributes "
                            f"{report.seam_attributes.hex()} do not match Intel's {name}")
    if version == 0:
        return TdxModuleStatus(name, "UpToDate")  # judged by the platform's levels
    try:
        levels = sorted(wanted.get("tcbLevels") or [], key=lambda lv: int(lv["tcb"]["isvsvn"]),
                        reverse=True)
    except (KeyError, TypeError, ValueError):
        raise EvidenceError(f"tdx: TCB Info's {name} has malformed tcbLevels") from None
    for level in levels:
        if svn >= int(level["tcb"]["isvsvn"]):
            status = str(level.get("tcbStatus"))
            if status not in MODULE_STATUSES:
                raise EvidenceError(f"tdx: {name} TCB status {status[:40]!r} is not one Intel "
                                    "defines for a TDX module")
            return TdxModuleStatus(name, status)
    return TdxModuleStatus(name, TCB_NOT_SUPPORTED)


def _converge(platform: str, module: str) -> str:
    """The worse of the platform's and the module's status, as Intel's QVL combines them."""
    if module in ("Revoked", TCB_NOT_SUPPORTED):
        return module
    if module == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return platform


def _qe_status(identity: Mapping[str, Any], qe_report: bytes) -> str:
    misc = int.from_bytes(qe_report[16:20], "little")
    attributes = qe_report[48:64]
    mrsigner = qe_report[128:160]
    prod_id, isv_svn = struct.unpack_from("<HH", qe_report, 256)
    mask = int(identity["miscselectMask"], 16)
    if misc & mask != int(identity["miscselect"], 16) & mask:
        raise EvidenceError("tdx: QE MISCSELECT does not match Intel's QE identity")
    wanted, attr_mask = bytes.fromhex(identity["attributes"]), bytes.fromhex(
        identity["attributesMask"])
    if bytes(a & m for a, m in zip(attributes, attr_mask, strict=True)) != \
            bytes(w & m for w, m in zip(wanted, attr_mask, strict=True)):
        raise EvidenceError("tdx: QE attributes do not match Intel's QE identity")
    if mrsigner.hex().upper() != str(identity["mrsigner"]).upper() \
            or prod_id != identity["isvprodid"]:
        raise EvidenceError("tdx: the quoting enclave is not Intel's TD QE")
    for level in identity.get("tcbLevels", []):
        if isv_svn >= level["tcb"]["isvsvn"]:
            return str(level["tcbStatus"])
    return TCB_NOT_SUPPORTED


def _sgx_extensions(pck: x509.Certificate) -> dict[str, Any]:
    """FMSPC, PCESVN and the 16 CPU SVN components from the PCK certificate's SGX extension
    (a DER SEQUENCE of (OID, value) pairs, nested for the TCB)."""
    try:
        raw = pck.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound:
        raise EvidenceError("tdx: the PCK certificate has no SGX extension") from None
    value = raw.value.value if isinstance(raw.value, x509.UnrecognizedExtension) else b""
    found: dict[str, Any] = {"cpusvn": [0] * 16}
    for oid, content in _pairs(value):
        if oid == f"{SGX_EXTENSIONS_OID}.4":
            found["fmspc"] = _der_value(content)
        elif oid == f"{SGX_EXTENSIONS_OID}.2":
            for inner_oid, inner in _pairs(content):
                index = int(inner_oid.rsplit(".", 1)[1])
                if 1 <= index <= 16:
                    found["cpusvn"][index - 1] = int.from_bytes(_der_value(inner), "big")
                elif index == 17:
                    found["pcesvn"] = int.from_bytes(_der_value(inner), "big")
    if "fmspc" not in found or "pcesvn" not in found:
        raise EvidenceError("tdx: the PCK certificate's SGX extension lacks FMSPC or PCESVN")
    return found


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at offset."""
    if offset + 2 > len(data):
        raise EvidenceError("tdx: truncated DER in the PCK certificate")
    tag, length = data[offset], data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > len(data):
        raise EvidenceError("tdx: truncated DER in the PCK certificate")
    return tag, start, start + length


def _pairs(sequence: bytes) -> list[tuple[str, bytes]]:
    """The (OID, value element) pairs of a DER SEQUENCE OF SEQUENCE {OID, ANY}."""
    _, start, end = _tlv(sequence, 0)
    out, offset = [], start
    while offset < end:
        _, pair_start, pair_end = _tlv(sequence, offset)
        _, oid_start, oid_end = _tlv(sequence, pair_start)
        out.append((_oid(sequence[oid_start:oid_end]), sequence[oid_end:pair_end]))
        offset = pair_end
    return out


def _der_value(element: bytes) -> bytes:
    _, start, end = _tlv(element, 0)
    return element[start:end]


def _oid(content: bytes) -> str:
    parts = [content[0] // 40, content[0] % 40]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _der_signature(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


class _Reader:
    """Bounds-checked reads: a truncated or lying quote is an error, never an over-read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise EvidenceError(f"tdx: quote truncated (wanted {size} bytes at {self.offset}, "
                                f"{len(self.data)} in all)")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk
