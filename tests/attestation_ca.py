"""A test AMD: an ARK/ASK made here, VCEKs with TCB and HWID extensions, and SNP-shaped reports
signed with them, so every branch of the verifier and of trust-level checks can be reached
(real reports are signed by hardware keys nobody has)."""

from __future__ import annotations

import datetime
import os
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from gateway.attestation.snp import HWID_OID, PRODUCT_OID, TCB_OIDS, AmdRoots, Tcb

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
MEASUREMENT = bytes(range(48))
CHIP_ID = bytes(range(64, 128))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test AMD")])


def _der_int(value: int) -> bytes:
    return bytes([0x02, 1, value]) if value < 0x80 else bytes([0x02, 2, 0, value])


@dataclass
class SnpTestCa:
    product: str = "Milan"
    ark_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ask_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048))

    def __post_init__(self) -> None:
        self.ark = self._cert(_name(f"ARK-{self.product}"), _name(f"ARK-{self.product}"),
                              self.ark_key.public_key(), self.ark_key, ca=True)
        self.ask = self._cert(_name(f"SEV-{self.product}"), _name(f"ARK-{self.product}"),
                              self.ask_key.public_key(), self.ark_key, ca=True)
        self.roots = {self.product: AmdRoots(self.product, self.ark, self.ask, None)}

    def _cert(self, subject: x509.Name, issuer: x509.Name, public_key: object,
              signer: rsa.RSAPrivateKey, *, ca: bool,
              extensions: dict[str, bytes] | None = None,
              days: int = 3650) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key)  # type: ignore[arg-type]
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(START).not_valid_after(START + datetime.timedelta(days)))
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                        critical=False)
        for oid, value in (extensions or {}).items():
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
        return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)

    def vcek(self, tcb: Tcb, chip_id: bytes = CHIP_ID) -> tuple[ec.EllipticCurvePrivateKey,
                                                                 bytes]:
        key = ec.generate_private_key(ec.SECP384R1())
        extensions = {oid: _der_int(getattr(tcb, name)) for name, oid in TCB_OIDS.items()
                      if getattr(tcb, name) is not None}
        extensions[HWID_OID] = chip_id
        extensions[PRODUCT_OID] = b"\x16\x08" + f"{self.product}-B0".encode()[:8]
        cert = self._cert(_name("SEV-VCEK"), _name(f"SEV-{self.product}"), key.public_key(),
                          self.ask_key, ca=False, extensions=extensions, days=7 * 365)
        return key, cert.public_bytes(serialization.Encoding.DER)


def tcb_bytes(tcb: Tcb) -> bytes:
    return bytes([tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode])


def snp_report(key: ec.EllipticCurvePrivateKey, *, report_data: bytes = b"",
               measurement: bytes = MEASUREMENT, tcb: Tcb | None = None,
               chip_id: bytes = CHIP_ID, policy: int = 0x30000, vmpl: int = 0,
               guest_svn: int = 0, version: int = 2) -> bytes:
    tcb = tcb or Tcb(bootloader=3, tee=0, snp=8, microcode=115)
    raw = bytearray(0x4A0)
    struct.pack_into("<IIQ", raw, 0, version, guest_svn, policy)
    struct.pack_into("<II", raw, 0x30, vmpl, 1)
    raw[0x50:0x90] = report_data.ljust(64, b"\0")
    raw[0x90:0xC0] = measurement
    raw[0x140:0x160] = os.urandom(32)  # report id
    raw[0x180:0x188] = tcb_bytes(tcb)
    raw[0x1A0:0x1E0] = chip_id
    raw[0x38:0x40] = raw[0x1E0:0x1E8] = raw[0x1F0:0x1F8] = tcb_bytes(tcb)
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2A0 + 72] = r.to_bytes(72, "little")
    raw[0x2E8:0x2E8 + 72] = s.to_bytes(72, "little")
    return bytes(raw)
