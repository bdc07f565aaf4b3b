"""NVIDIA's reference integrity manifests (RIMs): the values a GPU's SPDM measurements must
have for the driver and the VBIOS it runs, signed by NVIDIA, so a policy need not copy them by
hand.

A RIM is a SWID tag (ISO/IEC 19770-2, TCG RIM profile) carrying an enveloped XML signature
(NVIDIA's: ECDSA P-384 / SHA-384, C14N 1.1) whose signing certificate chain, in
KeyInfo/X509Data, must end at the RIM root (NVIDIA's "CoRIM signing Root CA", pinned as package
data). Its Payload lists `Resource type="Measurement"` elements: `index` (0-based; the SPDM
block index is one more), `active`, `alternatives`, and `Hash0`.. `Hash<n-1>` (SHA-384
namespace). Every active index must equal one of its alternatives; inactive ones are not
compared. Meta's `colloquialVersion` is the driver or VBIOS version the RIM is for.

Which RIMs apply is read from the opaque data the GPU signed with its measurements (TLVs: type
u16, length u16, value): the driver RIM is NV_GPU_DRIVER_GH100_<driver version> (other chips:
NV_GPU_CC_DRIVER_<chip>_<version>), the VBIOS RIM NV_GPU_VBIOS_<project>_<project SKU>_<chip
SKU>_<VBIOS version>, as NVIDIA's RIM service names them.

XML is parsed without DTDs, entities or network access, and bounded in size. Only what the
signature covers is read: the tree signxml returns as signed, which must be the whole
SoftwareIdentity document (a reference to one element of it, or a signature not directly under
the root, is refused), so an element wrapped around or added beside the signed tree is never
read.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from importlib import resources

import orjson
from cryptography import x509
from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier  # type: ignore[attr-defined]
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException

from gateway.attestation.chains import common_name, verify_chain
from gateway.attestation.nvidia import GpuEvidence
from gateway.errors import EvidenceError

MAX_RIM_BYTES = 1024 * 1024  # NVIDIA's are 20-60 KB
SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
SHA384 = "{http://www.w3.org/2001/04/xmlenc#sha384}"
DS = {"ds": "http://www.w3.org/2000/09/xmldsig#"}
DRIVER_VERSION, VBIOS_VERSION, CHIP_SKU, PROJECT, PROJECT_SKU, CHIP_INFO = 3, 6, 15, 17, 18, 35
SIGNED_AS = SignatureConfiguration(
    location="./", expect_references=1,
    signature_methods=frozenset({SignatureMethod.ECDSA_SHA384, SignatureMethod.ECDSA_SHA512,
                                 SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA384,
                                 SignatureMethod.RSA_SHA512}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA384,
                                 DigestAlgorithm.SHA512}))
logging.getLogger("signxml").setLevel(logging.WARNING)  # it logs every canonicalized document


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_pis=True)


@dataclass(frozen=True)
class Rim:
    """A RIM whose signature verified to the root: only signed values are kept."""

    version: str  # colloquialVersion, as the RIM spells it
    measurements: Mapping[int, tuple[str, ...]]  # active RIM index -> allowed values (hex)
    not_after: datetime  # relied on until then: its chain's end (or its OCSP's nextUpdate)
    signer: str  # the signing certificate's common name
    chain: tuple[x509.Certificate, ...] = ()  # from KeyInfo, signer first (OCSP is asked)


@dataclass(frozen=True)
class GpuVersions:
    """What the GPU signed about its firmware, and the RIMs that name it."""

    driver: str
    vbios: str  # "96.00.74.00.1a"
    driver_rim: str  # NV_GPU_DRIVER_GH100_550.90.07
    vbios_rim: str  # NV_GPU_VBIOS_1010_0200_882_960074001A

    def rim_ids(self) -> dict[str, str]:
        return {"driver": self.driver_rim, "vbios": self.vbios_rim}

    def version(self, kind: str) -> str:
        return self.driver if kind == "driver" else self.vbios


def opaque_fields(opaque: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    offset = 0
    while offset < len(opaque):
        if offset + 4 > len(opaque):
            raise EvidenceError("nvidia-gpu: opaque data field truncated")
        kind, size = struct.unpack_from("<HH", opaque, offset)
        if offset + 4 + size > len(opaque):
            raise EvidenceError(f"nvidia-gpu: opaque data field {kind} runs past its end")
        fields[kind] = opaque[offset + 4:offset + 4 + size]
        offset += 4 + size
    return fields


def gpu_versions(evidence: GpuEvidence) -> GpuVersions:
    """The driver and VBIOS versions in the signed opaque data, and their RIMs' ids."""
    fields = opaque_fields(evidence.opaque)
    missing = [name for kind, name in ((DRIVER_VERSION, "driver version"),
                                       (VBIOS_VERSION, "VBIOS version"), (PROJECT, "project"),
                                       (PROJECT_SKU, "project SKU"), (CHIP_SKU, "chip SKU"))
               if kind not in fields]
    if missing:
        raise EvidenceError(f"nvidia-gpu: the opaque data has no {', '.join(missing)}")
    driver = _text(fields[DRIVER_VERSION])
    vbios = _vbios_version(fields[VBIOS_VERSION])
    chip = _text(fields.get(CHIP_INFO, b"GH100")).upper()
    prefix = "NV_GPU_DRIVER_GH100_" if chip == "GH100" else f"NV_GPU_CC_DRIVER_{chip}_"
    board = "_".join(_text(fields[kind]).upper() for kind in (PROJECT, PROJECT_SKU, CHIP_SKU))
    return GpuVersions(driver, vbios, prefix + driver,
                       f"NV_GPU_VBIOS_{board}_{vbios.replace('.', '').upper()}")


def _text(value: bytes) -> str:
    text = value.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    if not text or not all(c.isalnum() or c in "._-" for c in text):
        raise EvidenceError("nvidia-gpu: an opaque data field is not a version or a name")
    return text


def _vbios_version(value: bytes) -> str:
    """8 bytes, little-endian: the low 32 bits then the next byte, two hex digits a part."""
    if len(value) != 8:
        raise EvidenceError(f"nvidia-gpu: the VBIOS version has {len(value)} bytes, not 8")
    number = int.from_bytes(value, "little")
    digits = f"{number & 0xFFFFFFFF:08x}{(number >> 32) & 0xFF:02x}"
    return ".".join(digits[i:i + 2] for i in range(0, 10, 2))


@cache
def nvidia_rim_root() -> x509.Certificate:
    data = (resources.files("gateway.attestation") / "roots" / "nvidia_rim_root.pem"
            ).read_bytes()
    return x509.load_pem_x509_certificate(data)


def unwrap(body: bytes) -> bytes:
    """The RIM's XML: a file holds it as is; NVIDIA's RIM service answers a JSON object whose
    `rim` is the base64 XML."""
    if len(body) > 2 * MAX_RIM_BYTES:
        raise EvidenceError(f"nvidia-rim: larger than {MAX_RIM_BYTES // 1024} KiB")
    if not body.lstrip().startswith(b"{"):
        return body
    try:
        wrapper = orjson.loads(body)
        return base64.b64decode(wrapper["rim"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
        raise EvidenceError("nvidia-rim: the RIM service's answer has no base64 'rim'") from None


def rim_not_after(body: bytes) -> datetime:
    """When the certificates a RIM carries stop being valid: how long a fetched one is kept
    (nothing is verified here)."""
    return min(cert.not_valid_after_utc for cert in _chain(_parse(_bounded(unwrap(body)))))


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_RIM_BYTES:
        raise EvidenceError(f"nvidia-rim: larger than {MAX_RIM_BYTES // 1024} KiB")
    return data


def verify_rim(body: bytes, root: x509.Certificate, at: datetime) -> Rim:
    """The RIM's signed measurements, if its signature verifies with a certificate chaining
    to `root` and valid at `at`."""
    document = _parse(_bounded(unwrap(body)))
    chain = _chain(document)
    # The chain is verified here, and signxml handed its verified leaf: signxml's own chain
    # check (cryptography's web-PKI verifier) refuses NVIDIA's genuine RIM CAs (validity dates
    # before 2050 in GeneralizedTime), and this way it is the same check, clock and messages
    # as every other vendor's chain.
    verify_chain(chain, root, at, prefix="nvidia-rim", root_label="NVIDIA RIM")
    try:
        result = XMLVerifier().verify(
            document, x509_cert=chain[0], parser=_parser(), validate_schema=True,
            expect_config=replace(SIGNED_AS, verification_time=at))
    except (SignXMLException, etree.LxmlError, ValueError) as exc:
        raise EvidenceError(f"nvidia-rim: the signature does not verify "
                            f"({type(exc).__name__})") from None
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None or signed.tag != f"{SWID}SoftwareIdentity":
        raise EvidenceError("nvidia-rim: the signature does not cover the whole RIM")
    return Rim(version=_version(signed), measurements=_measurements(signed),
               not_after=min(cert.not_valid_after_utc for cert in [*chain, root]),
               signer=common_name(chain[0].subject), chain=tuple(chain))


def _parse(data: bytes) -> etree._Element:
    try:
        document = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError:
        raise EvidenceError("nvidia-rim: not well-formed XML") from None
    if document.getroottree().docinfo.doctype:
        raise EvidenceError("nvidia-rim: a DOCTYPE is not allowed")
    if document.tag != f"{SWID}SoftwareIdentity":
        raise EvidenceError("nvidia-rim: not a SWID tag (SoftwareIdentity)")
    return document


def _chain(document: etree._Element) -> list[x509.Certificate]:
    found = document.findall("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", DS)
    if not found:
        raise EvidenceError("nvidia-rim: no signature with its certificate directly under "
                            "the root element")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return [x509.load_der_x509_certificate(base64.b64decode("".join(
                (cert.text or "").split()), validate=True)) for cert in found]
        except (ValueError, binascii.Error):
            raise EvidenceError("nvidia-rim: a signing certificate does not parse") from None


def _version(signed: etree._Element) -> str:
    meta = signed.find(f"{SWID}Meta")
    version = meta.get("colloquialVersion") if meta is not None else None
    if not version:
        raise EvidenceError("nvidia-rim: no colloquialVersion in Meta")
    return str(version)


def _measurements(signed: etree._Element) -> dict[int, tuple[str, ...]]:
    payloads = signed.findall(f"{SWID}Payload")
    if len(payloads) != 1:
        raise EvidenceError("nvidia-rim: expected exactly one Payload")
    measurements: dict[int, tuple[str, ...]] = {}
    for resource in payloads[0].iter(f"{SWID}Resource"):
        if resource.get("type") != "Measurement":
            continue
        try:
            index, count = int(resource.get("index", "")), int(resource.get("alternatives", ""))
        except ValueError:
            raise EvidenceError("nvidia-rim: a measurement without index or "
                                "alternatives") from None
        if index in measurements or not 0 <= index < 255 or not 0 < count <= 64:
            raise EvidenceError(f"nvidia-rim: measurement index {index} is repeated or out of "
                                "range")
        values = tuple((resource.get(f"{SHA384}Hash{n}") or "").lower() for n in range(count))
        if not all(len(v) == 96 and _is_hex(v) for v in values):
            raise EvidenceError(f"nvidia-rim: measurement {index} has a value that is not "
                                "SHA-384 hex")
        if resource.get("active") == "True":
            measurements[index] = values
    if not measurements:
        raise EvidenceError("nvidia-rim: no active measurements")
    return measurements


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def rim_problems(evidence: GpuEvidence, rims: Mapping[str, Rim]) -> list[str]:
    """Each active index of each RIM ("driver", "vbios") against the GPU's measurement (SPDM
    block index + 1); an index both RIMs claim is refused, as NVIDIA's verifier does."""
    problems = []
    claimed: dict[int, str] = {}
    for kind, rim in sorted(rims.items()):
        for index, allowed in sorted(rim.measurements.items()):
            if index in claimed:
                problems.append(f"GPU measurement index {index} is in both the {claimed[index]} "
                                f"and the {kind} RIM")
                continue
            claimed[index] = kind
            value = evidence.measurements.get(index + 1)
            if value is None:
                problems.append(f"GPU measurement index {index} ({kind} RIM) is missing")
            elif value.hex() not in allowed:
                problems.append(f"GPU measurement index {index} {value.hex()[:16]}... is not "
                                f"one of the {len(allowed)} the {kind} RIM {rim.version} allows")
    return problems
