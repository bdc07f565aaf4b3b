"""AMD SEV-SNP attestation reports: parse, verify the chain to a pinned AMD root and the report
signature, then check the measured values against what a trust level demands.

Report layout (SEV-SNP firmware ABI spec, "ATTESTATION_REPORT"): 1184 bytes, little-endian;
signed bytes 0x000-0x29F; signature R and S as 72-byte little-endian integers at 0x2A0 and
0x2E8, ECDSA P-384 with SHA-384 under the VCEK (chip-unique) or VLEK (cloud-provider) key.
Chain: ARK (self-signed, pinned per product line) -> ASK (VCEK) or ASVK (VLEK) -> VCEK/VLEK,
RSA-PSS SHA-384. The VCEK certifies the TCB it was issued for and the chip's HWID in
extensions; both must equal what the report says.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.attestation.chains import common_name as _common_name
from gateway.attestation.chains import verify_chain
from gateway.errors import EvidenceError

REPORT_SIZE = 0x4A0
SIGNED_END = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 5)
ECDSA_P384_SHA384 = 1
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
PRODUCTS = ("Milan", "Genoa", "Turin")
AMD_OID = "1.3.6.1.4.1.3704.1"
TCB_OIDS = {"bootloader": f"{AMD_OID}.3.1", "tee": f"{AMD_OID}.3.2", "snp": f"{AMD_OID}.3.3",
            "microcode": f"{AMD_OID}.3.8", "fmc": f"{AMD_OID}.3.9"}
HWID_OID = f"{AMD_OID}.4"
PRODUCT_OID = f"{AMD_OID}.2"


@dataclass(frozen=True)
class Tcb:
    """Security patch levels of the firmware components (higher is newer)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin and later only

    @classmethod
    def from_bytes(cls, raw: bytes, turin: bool) -> Tcb:
        if turin:  # FMC, bootloader, TEE, SNP, 3 reserved, microcode
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def below(self, minimum: dict[str, int]) -> list[str]:
        """Components under the minimum, as `name=value<minimum`."""
        return [f"{name}={getattr(self, name)}<{floor}" for name, floor in sorted(minimum.items())
                if (getattr(self, name) or 0) < floor]


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signing_key: int  # 0 VCEK, 1 VLEK, 7 none
    report_data: bytes
    measurement: bytes
    host_data: bytes
    reported_tcb_raw: bytes
    cpuid_family: int | None  # version 3 and later
    chip_id: bytes
    signature: bytes  # DER ECDSA signature

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migration_agent(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)


def parse_report(raw: bytes) -> SnpReport:
    if len(raw) != REPORT_SIZE:
        raise EvidenceError(f"sev-snp: report is {len(raw)} bytes, expected {REPORT_SIZE}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceError(f"sev-snp: report version {version} is not supported "
                            f"({', '.join(map(str, SUPPORTED_VERSIONS))})")
    vmpl, algorithm = struct.unpack_from("<II", raw, 0x30)
    if algorithm != ECDSA_P384_SHA384:
        raise EvidenceError(f"sev-snp: signature algorithm {algorithm} is not ECDSA P-384")
    (key_info,) = struct.unpack_from("<I", raw, 0x48)
    r = int.from_bytes(raw[0x2A0:0x2A0 + 72], "little")
    s = int.from_bytes(raw[0x2E8:0x2E8 + 72], "little")
    return SnpReport(
        raw=raw, version=version, guest_svn=guest_svn, policy=policy, vmpl=vmpl,
        signing_key=(key_info >> 2) & 0x7, report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0], host_data=raw[0xC0:0xE0],
        reported_tcb_raw=raw[0x180:0x188], cpuid_family=raw[0x188] if version >= 3 else None,
        chip_id=raw[0x1A0:0x1E0], signature=encode_dss_signature(r, s))


@dataclass(frozen=True)
class AmdRoots:
    """ARK and its intermediates (ASK for VCEKs, ASVK for VLEKs) for one product line."""

    product: str
    ark: x509.Certificate
    ask: x509.Certificate | None
    asvk: x509.Certificate | None


def _load_pem_chain(data: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():  # AMD certificates use serial 0, which cryptography warns on
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificates(data)


def load_certificate(data: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise EvidenceError("sev-snp: endorsement key certificate does not parse") from None


@cache
def amd_roots(folder: str | None = None) -> dict[str, AmdRoots]:
    """The pinned roots shipped with the package (gateway/attestation/roots), or those in
    `folder` (same file names) when the operator configures one."""
    base = Path(folder) if folder else resources.files("gateway.attestation") / "roots"
    roots: dict[str, AmdRoots] = {}
    for product in PRODUCTS:
        chain_file = base / f"amd_{product.lower()}.pem"
        if not chain_file.is_file():
            continue
        ask, ark = _load_pem_chain(chain_file.read_bytes())
        asvk = None
        vlek_file = base / f"amd_{product.lower()}_vlek.pem"
        if vlek_file.is_file():
            asvk, vlek_ark = _load_pem_chain(vlek_file.read_bytes())
            if vlek_ark.public_key() != ark.public_key():
                raise RuntimeError(f"pinned {product} ARKs disagree")
        roots[product] = AmdRoots(product, ark, ask, asvk)
    return roots


@dataclass(frozen=True)
class VerifiedSnp:
    """A report whose chain and signature verified: the values a trust level is checked on."""

    report: SnpReport
    product: str
    key_kind: str  # "vcek" or "vlek"
    reported_tcb: Tcb
    not_after: datetime  # the endorsement certificate's end of validity

    def values(self) -> dict[str, str | int | bool]:
        tcb = self.reported_tcb
        return {"format": "sev-snp", "product": self.product, "key": self.key_kind,
                "version": self.report.version, "measurement": self.report.measurement.hex(),
                "host_data": self.report.host_data.hex(), "vmpl": self.report.vmpl,
                "guest_svn": self.report.guest_svn, "debug": self.report.debug,
                "migration_agent": self.report.migration_agent,
                "tcb": f"bl={tcb.bootloader} tee={tcb.tee} snp={tcb.snp} "
                       f"ucode={tcb.microcode}" + (f" fmc={tcb.fmc}" if tcb.fmc is not None
                                                   else ""),
                "chip_id": self.report.chip_id.hex()}


def verify_report(raw: bytes, endorsement_cert: bytes, *, at: datetime,
                  roots: Mapping[str, AmdRoots] | None = None) -> VerifiedSnp:
    """Chain to a pinned root (the shipped ones unless `roots` says otherwise), TCB and HWID
    bound to the certificate, report signature."""
    report = parse_report(raw)
    cert = load_certificate(endorsement_cert)
    issuer = _common_name(cert.issuer)
    kind = "vlek" if "VLEK" in issuer else "vcek"
    product = issuer.rsplit("-", 1)[-1]
    pinned = (roots or amd_roots()).get(product)
    if pinned is None:
        raise EvidenceError(f"sev-snp: certificate issued by {issuer!r}, not a pinned AMD "
                            f"product line ({', '.join(PRODUCTS)})")
    intermediate = pinned.asvk if kind == "vlek" else pinned.ask
    if intermediate is None:
        raise EvidenceError(f"sev-snp: no pinned {kind.upper()} chain for {product}")
    _verify_chain([cert, intermediate, pinned.ark], at)
    if report.signing_key != (1 if kind == "vlek" else 0):
        raise EvidenceError(f"sev-snp: report says signing key {report.signing_key}, "
                            f"certificate is a {kind.upper()}")
    tcb = Tcb.from_bytes(report.reported_tcb_raw, turin=product == "Turin")
    _check_bound_to_certificate(report, cert, tcb, kind, product)
    try:
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise EvidenceError("sev-snp: endorsement key is not an EC key")
        public_key.verify(report.signature, raw[:SIGNED_END], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("sev-snp: report signature does not verify") from None
    return VerifiedSnp(report, product, kind, tcb, cert.not_valid_after_utc)


def _verify_chain(chain: list[x509.Certificate], at: datetime) -> None:
    """VCEK/VLEK, ASK/ASVK, then the pinned ARK itself."""
    verify_chain(chain[:-1], chain[-1], at, prefix="sev-snp", root_label="AMD")


def _check_bound_to_certificate(report: SnpReport, cert: x509.Certificate, tcb: Tcb,
                                kind: str, product: str) -> None:
    for name, oid in TCB_OIDS.items():
        certified = _extension_int(cert, oid)
        if certified is None:
            if name == "fmc" and product != "Turin":
                continue
            raise EvidenceError(f"sev-snp: certificate lacks the {name} TCB extension")
        if certified != getattr(tcb, name):
            raise EvidenceError(f"sev-snp: reported TCB {name}={getattr(tcb, name)} but the "
                                f"certificate was issued for {certified}")
    if kind == "vcek":
        hwid = _extension_bytes(cert, HWID_OID)
        # Turin VCEKs carry an 8-byte HWID: the report's chip_id starts with it.
        if hwid is None or len(hwid) not in (8, 64) or report.chip_id[:len(hwid)] != hwid:
            raise EvidenceError("sev-snp: chip_id does not match the VCEK's hardware id")


def _extension_bytes(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _extension_int(cert: x509.Certificate, oid: str) -> int | None:
    """AMD's TCB extensions hold a DER INTEGER (tag 2, short length, big-endian)."""
    raw = _extension_bytes(cert, oid)
    if raw is None:
        return None
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2:
        raise EvidenceError(f"sev-snp: certificate extension {oid} is not an integer")
    return int.from_bytes(raw[2:], "big")
