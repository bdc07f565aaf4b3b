"""NVIDIA GPU evidence (Hopper and later in confidential-computing mode): an SPDM 1.1
GET_MEASUREMENTS request and the GPU's signed response, with the device certificate chain.

The response is signed (ECDSA P-384, SHA-384) by the GPU's attestation key, certified by a chain
that ends at NVIDIA's device identity root (pinned, package data), over the request followed by
the response without its signature. The request carries the requester's nonce: the agent in the
VM must use the first 32 bytes of the gateway's binding value, which ties the GPU's evidence to
the same nonce and TLS key as the CPU's.

Layout (DMTF DSP0274 1.1): request = version, 0xE0, flags, index, nonce[32], slot;
response = version, 0x60, param1, param2, block count, record length (3 bytes LE), the record
(blocks: index, spec 0x01, size u16, then value type, value size u16, value), nonce[32],
opaque length u16, opaque data, signature[96].
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.attestation.chains import verify_chain
from gateway.errors import EvidenceError

REQUEST_SIZE = 37
GET_MEASUREMENTS, MEASUREMENTS = 0xE0, 0x60
SIGNATURE_SIZE = 96


@dataclass(frozen=True)
class GpuEvidence:
    requester_nonce: bytes
    responder_nonce: bytes
    measurements: dict[int, bytes]  # index -> measurement value
    signed: bytes
    signature: bytes  # DER
    opaque: bytes = b""  # signed with the measurements: driver and VBIOS versions (rims.py)


@dataclass(frozen=True)
class VerifiedGpu:
    """One GPU of a backend's evidence: its place among the document's nvidia-gpu parts and
    its device certificate's serial, which is how every message about it names it."""

    index: int
    serial: str  # hex, of the attestation key's certificate (the chain's first)
    key_sha256: bytes  # of that key (SubjectPublicKeyInfo): the same GPU has the same key
    evidence: GpuEvidence

    def label(self) -> str:
        return gpu_label(self.index, self.serial)


def gpu_label(index: int, serial: str | None) -> str:
    return f"GPU {index}" + (f" (certificate serial {serial})" if serial else "")


def certificate_serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def key_sha256(cert: x509.Certificate) -> bytes:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def parse_evidence(raw: bytes) -> GpuEvidence:
    if len(raw) < REQUEST_SIZE + 8 + 32 + 2 + SIGNATURE_SIZE:
        raise EvidenceError(f"nvidia-gpu: evidence of {len(raw)} bytes is too short")
    version, code = raw[0], raw[1]
    if code != GET_MEASUREMENTS or version not in (0x11, 0x12):
        raise EvidenceError("nvidia-gpu: not an SPDM 1.1/1.2 GET_MEASUREMENTS request")
    requester_nonce = raw[4:36]
    response = raw[REQUEST_SIZE:]
    if response[1] != MEASUREMENTS or response[0] != version:
        raise EvidenceError("nvidia-gpu: not an SPDM MEASUREMENTS response to that request")
    count = response[4]
    record_length = int.from_bytes(response[5:8], "little")
    end = 8 + record_length
    if end + 34 > len(response):
        raise EvidenceError("nvidia-gpu: measurement record runs past the evidence")
    measurements = _blocks(response[8:end], count)
    responder_nonce = response[end:end + 32]
    (opaque_length,) = struct.unpack_from("<H", response, end + 32)
    signed_end = end + 34 + opaque_length
    signature = response[signed_end:signed_end + SIGNATURE_SIZE]
    if len(signature) != SIGNATURE_SIZE:
        raise EvidenceError("nvidia-gpu: signature missing or truncated")
    der = encode_dss_signature(int.from_bytes(signature[:48], "big"),
                               int.from_bytes(signature[48:], "big"))
    return GpuEvidence(requester_nonce, responder_nonce, measurements,
                       raw[:REQUEST_SIZE + signed_end], der, response[end + 34:signed_end])


def _blocks(record: bytes, count: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    for _ in range(count):
        if offset + 7 > len(record):
            raise EvidenceError("nvidia-gpu: measurement block truncated")
        index, spec, size = struct.unpack_from("<BBH", record, offset)
        value_type, value_size = struct.unpack_from("<BH", record, offset + 4)
        if spec != 0x01 or value_size + 3 != size or offset + 4 + size > len(record):
            raise EvidenceError(f"nvidia-gpu: malformed measurement block {index}")
        del value_type  # digest or raw bitstream: compared as bytes either way
        out[index] = record[offset + 7:offset + 7 + value_size]
        offset += 4 + size
    if offset != len(record):
        raise EvidenceError("nvidia-gpu: measurement record has trailing bytes")
    return out


@cache
def nvidia_root() -> x509.Certificate:
    data = (resources.files("gateway.attestation") / "roots" / "nvidia_device_root.pem"
            ).read_bytes()
    return x509.load_pem_x509_certificate(data)


def load_chain(chain_pem: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            raise EvidenceError("nvidia-gpu: the certificate chain does not parse") from None


def verify_gpu_evidence(raw: bytes, chain_pem: bytes, *, expected_nonce: bytes | None,
                        at: datetime, root: x509.Certificate | None = None) -> GpuEvidence:
    evidence = parse_evidence(raw)
    chain = load_chain(chain_pem)
    verify_chain(chain, root or nvidia_root(), at, prefix="nvidia-gpu", root_label="NVIDIA")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EvidenceError("nvidia-gpu: the attestation key is not an EC key")
    try:
        key.verify(evidence.signature, evidence.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("nvidia-gpu: the measurements' signature does not verify") from None
    if expected_nonce is not None and evidence.requester_nonce != expected_nonce:
        raise EvidenceError("nvidia-gpu: the request nonce is not this gateway's (a replayed "
                            "report, or one from another machine)")
    return evidence
