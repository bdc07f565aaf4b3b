"""Private vendors for tests, since real evidence is signed by hardware keys nobody has: a test
AMD (ARK, ASK and ASVK; VCEKs and VLEKs with TCB and HWID extensions; SNP-shaped reports signed
with them), a test Intel (SGX root, PCK chain with the SGX extension, TCB signing key, TDX quotes
with signed collateral) and a test NVIDIA (a device root and an attestation key signing
SPDM-shaped measurements), so every branch of the verifier and of the trust-level checks can be
reached. `Vendors` puts one of each together: the `Roots` a test hands the verifier, the key set
of a test attestation service, and the evidence document a confidential backend answers with."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner, methods  # type: ignore[attr-defined]
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from gateway.attestation.snp import HWID_OID, PRODUCT_OID, TCB_OIDS, AmdRoots, Tcb
from gateway.attestation.trust_roots import Roots

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
CRL_NEXT_UPDATE = datetime.datetime(2036, 1, 1, tzinfo=datetime.UTC)
OCSP_URL = "http://ocsp.nvidia.test"
MEASUREMENT = bytes(range(48))
CHIP_ID = bytes(range(64, 128))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test AMD")])


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def certificate(subject: str, issuer: str, public_key: Any, signer: SigningKey, *, ca: bool,
                extensions: dict[str, bytes] | None = None, days: int = 3650,
                more: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    """Valid from START; signed the way each vendor signs: RSA-PSS SHA-384 (AMD), ECDSA P-256
    SHA-256 (Intel), ECDSA P-384 SHA-384 (NVIDIA)."""
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(_name(issuer)).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(START).not_valid_after(START + datetime.timedelta(days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=False))
    for oid, value in (extensions or {}).items():
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    for extension in more:
        builder = builder.add_extension(extension, critical=False)
    if isinstance(signer, rsa.RSAPrivateKey):
        return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)
    p256 = isinstance(signer.curve, ec.SECP256R1)
    return builder.sign(signer, hashes.SHA256() if p256 else hashes.SHA384())


def _der_int(value: int) -> bytes:
    return bytes([0x02, 1, value]) if value < 0x80 else bytes([0x02, 2, 0, value])


def _tcb_extensions(tcb: Tcb) -> dict[str, bytes]:
    return {oid: _der_int(getattr(tcb, name)) for name, oid in TCB_OIDS.items()
            if getattr(tcb, name) is not None}


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@dataclass
class SnpTestCa:
    product: str = "Milan"
    ark_key: rsa.RSAPrivateKey = field(default_factory=_rsa_key)
    ask_key: rsa.RSAPrivateKey = field(default_factory=_rsa_key)
    asvk_key: rsa.RSAPrivateKey = field(default_factory=_rsa_key)

    def __post_init__(self) -> None:
        ark = f"ARK-{self.product}"
        self.ark = certificate(ark, ark, self.ark_key.public_key(), self.ark_key, ca=True)
        self.ask = certificate(f"SEV-{self.product}", ark, self.ask_key.public_key(),
                               self.ark_key, ca=True)
        self.asvk = certificate(f"SEV-VLEK-{self.product}", ark, self.asvk_key.public_key(),
                                self.ark_key, ca=True)
        self.roots = {self.product: AmdRoots(self.product, self.ark, self.ask, self.asvk)}

    def vcek(self, tcb: Tcb, chip_id: bytes = CHIP_ID) -> tuple[ec.EllipticCurvePrivateKey,
                                                                 bytes]:
        key = ec.generate_private_key(ec.SECP384R1())
        extensions = {**_tcb_extensions(tcb), HWID_OID: chip_id,
                      PRODUCT_OID: b"\x16\x08" + f"{self.product}-B0".encode()[:8]}
        cert = certificate("SEV-VCEK", f"SEV-{self.product}", key.public_key(), self.ask_key,
                           ca=False, extensions=extensions, days=7 * 365)
        return key, cert.public_bytes(serialization.Encoding.DER)

    def vlek(self, tcb: Tcb) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """A cloud provider's VLEK: certified by the ASVK, no chip id (one key, many chips)."""
        key = ec.generate_private_key(ec.SECP384R1())
        cert = certificate("SEV-VLEK", f"SEV-VLEK-{self.product}", key.public_key(),
                           self.asvk_key, ca=False, extensions=_tcb_extensions(tcb))
        return key, cert.public_bytes(serialization.Encoding.DER)

    def crl(self, kind: str = "vcek", *, revoked: tuple[bytes | x509.Certificate, ...] = (),
            next_update: datetime.datetime = CRL_NEXT_UPDATE,
            signer: rsa.RSAPrivateKey | None = None,
            this_update: datetime.datetime = START) -> bytes:
        """The ARK's CRL for the VCEK (or VLEK) chain, as AMD KDS serves it (DER, RSA-PSS),
        listing `revoked` (certificates, or DER certificates as `vcek` answers them)."""
        del kind  # one ARK signs both; the file name or URL says which chain it is for
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
                   .last_update(this_update).next_update(next_update))
        for cert in revoked:
            loaded = cert if isinstance(cert, x509.Certificate) \
                else x509.load_der_x509_certificate(cert)
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(loaded.serial_number)
                .revocation_date(START).build())
        crl = builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        return crl.public_bytes(serialization.Encoding.DER)

    def roots_dir(self, directory: Path, *, crl: bytes | None = None,
                  vlek_crl: bytes | None = None) -> str:
        """`directory` as an operator's `attestation.amd_roots_dir`: this AMD's chains and
        CRLs (empty ones unless given)."""
        pem = serialization.Encoding.PEM
        name = self.product.lower()
        (directory / f"amd_{name}.pem").write_bytes(
            self.ask.public_bytes(pem) + self.ark.public_bytes(pem))
        (directory / f"amd_{name}_vlek.pem").write_bytes(
            self.asvk.public_bytes(pem) + self.ark.public_bytes(pem))
        (directory / f"amd_{name}.crl").write_bytes(crl or self.crl())
        (directory / f"amd_{name}_vlek.crl").write_bytes(vlek_crl or self.crl("vlek"))
        return str(directory)


def tcb_bytes(tcb: Tcb) -> bytes:
    return bytes([tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode])


def snp_report(key: ec.EllipticCurvePrivateKey, *, report_data: bytes = b"",
               measurement: bytes = MEASUREMENT, tcb: Tcb | None = None,
               chip_id: bytes = CHIP_ID, policy: int = 0x30000, vmpl: int = 0,
               guest_svn: int = 0, version: int = 2, signing_key: int = 0) -> bytes:
    tcb = tcb or Tcb(bootloader=3, tee=0, snp=8, microcode=115)
    raw = bytearray(0x4A0)
    struct.pack_into("<IIQ", raw, 0, version, guest_svn, policy)
    struct.pack_into("<II", raw, 0x30, vmpl, 1)
    struct.pack_into("<I", raw, 0x48, signing_key << 2)
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


# -- A test Intel: SGX root, PCK chain with the SGX extension, TCB signing key, and TDX quotes
# with signed collateral, so every TDX requirement branch can be reached.

def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytes([parts[0] * 40 + parts[1]])
    for part in parts[2:]:
        chunk, rest = [part & 0x7F], part >> 7
        while rest:
            chunk.insert(0, 0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(chunk)
    return _der(0x06, body)


def _der_integer(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _der(0x02, raw)


def _pair(oid: str, value: bytes) -> bytes:
    return _der(0x30, _der_oid(oid) + value)


SGX = "1.2.840.113741.1.13.1"
QE_MRSIGNER = bytes(range(32))
FMSPC = bytes.fromhex("00906ed50000")
MRTD = bytes(range(100, 148))


def sgx_extension(cpusvn: list[int], pcesvn: int, fmspc: bytes = FMSPC) -> bytes:
    tcb = b"".join(_pair(f"{SGX}.2.{i + 1}", _der_integer(svn)) for i, svn in enumerate(cpusvn))
    tcb += _pair(f"{SGX}.2.17", _der_integer(pcesvn))
    tcb += _pair(f"{SGX}.2.18", _der(0x04, bytes(cpusvn)))
    return _der(0x30, _pair(f"{SGX}.1", _der(0x04, bytes(16)))
                + _pair(f"{SGX}.2", _der(0x30, tcb))
                + _pair(f"{SGX}.3", _der(0x04, b"\0\0"))
                + _pair(f"{SGX}.4", _der(0x04, fmspc)))


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class TdxTestCa:
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        root = "Test SGX Root CA"
        self.root = certificate(root, root, self.root_key.public_key(), self.root_key, ca=True)
        self.pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_ca = certificate("Test SGX PCK Platform CA", root, self.pck_ca_key.public_key(),
                                  self.root_key, ca=True)
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.signing = certificate("Test SGX TCB Signing", root, self.signing_key.public_key(),
                                   self.root_key, ca=False)

    def pem(self, *certs: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def pck_crl(self, revoked: tuple[x509.Certificate, ...] = (), *,
                this_update: datetime.datetime = START,
                next_update: datetime.datetime = START + datetime.timedelta(3650)) -> bytes:
        """A CRL from the PCK CA listing `revoked` (none: empty), valid for ten years unless
        dated otherwise."""
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.pck_ca.subject)
                   .last_update(this_update).next_update(next_update))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(START).build())
        crl = builder.sign(self.pck_ca_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.DER)

    def signed_json(self, name: str, body: dict[str, object]) -> str:
        text = json.dumps(body, separators=(",", ":"))
        return (f'{{"{name}":{text},"signature":"'
                f'{_raw_signature(self.signing_key, text.encode()).hex()}"}}')

    def collateral(self, *, tcb_status: str = "UpToDate",
                   next_update: str = "2030-01-01T00:00:00Z", module_status: str = "UpToDate",
                   module_mrsigner: bytes = bytes(48),
                   module_ids: tuple[str, ...] = ("TDX_01",),
                   module_levels: tuple[tuple[int, str], ...] | None = None) -> dict[str, str]:
        """TCB Info v3 with one platform level and, per id in `module_ids`, a TDX module
        identity whose single level (isvsvn 1, the test quote's) says `module_status`, or
        whose levels are `module_levels` ((isvsvn, status), newest first)."""
        levels = module_levels or ((1, module_status),)
        level = {"tcb": {"sgxtcbcomponents": [{"svn": 2}] * 16, "pcesvn": 10,
                         "tdxtcbcomponents": [{"svn": 1}] * 16},
                 "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": tcb_status}
        tcb_info = {"id": "TDX", "version": 3, "issueDate": "2024-01-01T00:00:00Z",
                    "nextUpdate": next_update, "fmspc": FMSPC.hex(), "pceId": "0000",
                    "tcbType": 0, "tcbEvaluationDataNumber": 17,
                    "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8,
                                  "attributesMask": "FF" * 8},
                    "tdxModuleIdentities": [
                        {"id": module_id, "mrsigner": module_mrsigner.hex().upper(),
                         "attributes": "00" * 8, "attributesMask": "FF" * 8,
                         "tcbLevels": [{"tcb": {"isvsvn": svn}, "tcbDate": "2024-01-01T00:00:00Z",
                                        "tcbStatus": status} for svn, status in levels]}
                        for module_id in module_ids],
                    "tcbLevels": [level]}
        identity = {"id": "TD_QE", "version": 2, "issueDate": "2024-01-01T00:00:00Z",
                    "nextUpdate": next_update, "miscselect": "00000000",
                    "miscselectMask": "FFFFFFFF", "attributes": "11" + "00" * 15,
                    "attributesMask": "FBFFFFFFFFFFFFFF" + "00" * 8,
                    "mrsigner": QE_MRSIGNER.hex().upper(), "isvprodid": 2,
                    "tcbLevels": [{"tcb": {"isvsvn": 4}, "tcbDate": "2024-01-01T00:00:00Z",
                                   "tcbStatus": "UpToDate"}]}
        chain = self.pem(self.signing, self.root).decode()
        return {"tcb_info": self.signed_json("tcbInfo", tcb_info), "tcb_info_chain": chain,
                "qe_identity": self.signed_json("enclaveIdentity", identity),
                "qe_identity_chain": chain}

    def write_collateral(self, folder: Path, **options: Any) -> Path:
        """`collateral(**options)` and an empty PCK CRL under the names `veil attest verify
        --collateral` reads (tdx.collateral_from_dir)."""
        folder.mkdir(parents=True, exist_ok=True)
        collateral, fmspc = self.collateral(**options), FMSPC.hex()
        (folder / f"tcb_info_{fmspc}.json").write_text(collateral["tcb_info"])
        (folder / f"tcb_info_{fmspc}_chain.pem").write_text(collateral["tcb_info_chain"])
        (folder / "qe_identity.json").write_text(collateral["qe_identity"])
        (folder / "qe_identity_chain.pem").write_text(collateral["qe_identity_chain"])
        (folder / "pck_crl_platform.crl").write_bytes(self.pck_crl())
        return folder

    def quote(self, *, report_data: bytes = b"", mrtd: bytes = MRTD, td_attributes: int = 0,
              cpusvn: int = 2, rtmr1: bytes = bytes(48),
              tee_tcb_svn: bytes = bytes([1] * 16), seam_attributes: bytes = bytes(8),
              rtmrs: dict[int, bytes] | None = None,
              tee_tcb_svn2: bytes | None = None) -> bytes:
        """A v4 quote; with `tee_tcb_svn2`, a v5 quote with a TD report 1.5 body carrying it.
        `rtmrs` (index -> value) sets RTMRs besides `rtmr1`."""
        pck_key = ec.generate_private_key(ec.SECP256R1())
        pck = certificate("Test SGX PCK Certificate", "Test SGX PCK Platform CA",
                          pck_key.public_key(), self.pck_ca_key, ca=False,
                          extensions={SGX: sgx_extension([cpusvn] * 16, pcesvn=10)})
        self.last_pck = pck  # the platform's certificate in the latest quote (to revoke it)
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        point = attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        version = 4 if tee_tcb_svn2 is None else 5
        header = struct.pack("<HHIHH", version, 2, 0x81, 0, 0) + bytes(16) + bytes(20)
        body = bytearray(584 if tee_tcb_svn2 is None else 648)
        body[0:16] = tee_tcb_svn  # [0]: TDX module SVN, [1]: its major version
        body[112:120] = seam_attributes
        body[120:128] = td_attributes.to_bytes(8, "little")
        body[136:184] = mrtd
        for index, value in {1: rtmr1, **(rtmrs or {})}.items():
            body[328 + 48 * index:376 + 48 * index] = value
        body[520:584] = report_data.ljust(64, b"\0")
        if tee_tcb_svn2 is not None:
            body[584:600] = tee_tcb_svn2  # the TDX module running now (TD report 1.5)
            header += struct.pack("<HI", 3, len(body))  # v5 body descriptor: TD report 1.5
        signed = header + bytes(body)
        auth = bytes(32)
        qe_report = bytearray(384)
        qe_report[48] = 0x11
        qe_report[128:160] = QE_MRSIGNER
        qe_report[256:260] = struct.pack("<HH", 2, 4)
        qe_report[320:352] = hashlib.sha256(point + auth).digest()
        chain = self.pem(pck, self.pck_ca, self.root)
        certification = (bytes(qe_report) + _raw_signature(pck_key, bytes(qe_report))
                         + struct.pack("<H", len(auth)) + auth
                         + struct.pack("<HI", 5, len(chain)) + chain)
        signature_data = (_raw_signature(attestation_key, signed) + point
                          + struct.pack("<HI", 6, len(certification)) + certification)
        return signed + struct.pack("<I", len(signature_data)) + signature_data


# -- A test NVIDIA: a device root and an attestation key signing SPDM-shaped measurements, and
# the OCSP responder answering about that key's certificate.

ROOT_NAME = "Test NVIDIA Device Identity CA"

@dataclass
class GpuTestCa:
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def __post_init__(self) -> None:
        root = ROOT_NAME
        self.root = certificate(root, root, self.root_key.public_key(), self.root_key, ca=True)
        self.key, self.leaf = self.certify(ec.generate_private_key(ec.SECP384R1()))
        self.devices = [(self.key, self.leaf)]

    def certify(self, key: ec.EllipticCurvePrivateKey) -> tuple[ec.EllipticCurvePrivateKey,
                                                                 x509.Certificate]:
        """A GPU's attestation key certified by the root (a new certificate every time)."""
        return key, certificate("Test GH100 attestation key", ROOT_NAME, key.public_key(),
                                self.root_key, ca=False, more=(x509.AuthorityInformationAccess(
                                    [x509.AccessDescription(
                                        x509.AuthorityInformationAccessOID.OCSP,
                                        x509.UniformResourceIdentifier(OCSP_URL))]),))

    def device(self, index: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The node's GPU `index` (0 is `key`/`leaf`), each with its own key and certificate."""
        while len(self.devices) <= index:
            self.devices.append(self.certify(ec.generate_private_key(ec.SECP384R1())))
        return self.devices[index]

    def ocsp(self, *, status: str = "good", cert: x509.Certificate | None = None,
             signer: ec.EllipticCurvePrivateKey | None = None, delegated: bool = False,
             this_update: datetime.datetime = START,
             next_update: datetime.datetime | None = CRL_NEXT_UPDATE,
             nonce: bytes | None = None) -> bytes:
        """The responder's answer about the attestation key's certificate (or `cert`): signed
        by the root, by a responder the root certified (`delegated`), or by `signer`; echoing
        a request's `nonce` when given."""
        key, responder = self.root_key, self.root
        if delegated:
            key = ec.generate_private_key(ec.SECP384R1())
            responder = certificate("Test NVIDIA OCSP responder", ROOT_NAME, key.public_key(),
                                    self.root_key, ca=False, more=(x509.ExtendedKeyUsage(
                                        [x509.ExtendedKeyUsageOID.OCSP_SIGNING]),))
        encoding = ocsp.OCSPResponderEncoding.HASH
        if signer is not None:  # another key under the root's name: the signature must fail
            key, responder = signer, certificate(ROOT_NAME, ROOT_NAME, signer.public_key(),
                                                 signer, ca=True)
            encoding = ocsp.OCSPResponderEncoding.NAME
        revoked = status == "revoked"
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert or self.leaf, issuer=self.root, algorithm=hashes.SHA384(),
            cert_status=getattr(ocsp.OCSPCertStatus, status.upper()),
            this_update=this_update, next_update=next_update,
            revocation_time=START if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        ).responder_id(encoding, responder)
        if delegated:
            builder = builder.certificates([responder])
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = builder.sign(key, hashes.SHA384())
        return response.public_bytes(serialization.Encoding.DER)

    def chain_pem(self, leaf: x509.Certificate | None = None) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (leaf or self.leaf, self.root))

    def part(self, nonce: bytes, device: int = 0, *,
             measurements: dict[int, bytes] | None = None, opaque: bytes = b"opaq",
             ocsp: bytes | None = None, stapled: bool = True) -> dict[str, Any]:
        """GPU `device`'s nvidia-gpu part, asked with `nonce` (32 bytes), OCSP stapled (a
        good answer about its certificate unless `ocsp`; none with `stapled=False`)."""
        key, leaf = self.device(device)
        return {"format": "nvidia-gpu",
                "evidence": spdm_evidence(key, nonce, measurements or {1: b"\x11" * 48},
                                          opaque).hex(),
                "certificates": self.chain_pem(leaf).decode(),
                "ocsp": [base64.b64encode(ocsp or self.ocsp(cert=leaf)).decode()]
                if stapled else []}

    def evidence(self, nonce: bytes, measurements: dict[int, bytes],
                 opaque: bytes = b"opaq") -> bytes:
        return spdm_evidence(self.key, nonce, measurements, opaque)


def gpu_opaque(driver: str = "550.90.07", vbios: str = "96.00.74.00.1a", *,
               project: str = "1010", project_sku: str = "0200", chip_sku: str = "882") -> bytes:
    """The opaque data an H100 signs with its measurements (TLVs), with the fields that name
    its RIMs: NV_GPU_DRIVER_GH100_<driver>, NV_GPU_VBIOS_<project>_<sku>_<chip sku>_<vbios>."""
    parts = vbios.split(".")
    number = int("".join(parts[:4]), 16) | int(parts[4], 16) << 32
    fields = {3: driver.encode() + b"\0", 6: number.to_bytes(8, "little"),
              15: chip_sku.encode() + b"\0", 17: project.encode() + b"\0",
              18: project_sku.encode() + b"\0", 11: b"\x55"}
    return b"".join(struct.pack("<HH", kind, len(value)) + value
                    for kind, value in fields.items())


RIM_ROOT_NAME = "Test NVIDIA CoRIM signing Root CA"
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"


def _p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@dataclass
class RimTestCa:
    """A test NVIDIA RIM signer (root, CA, signing key; ECDSA P-384) making SWID tags shaped
    like NVIDIA's and signed the way NVIDIA signs them (enveloped, C14N 1.1, ECDSA-SHA384,
    the chain with the root in KeyInfo/X509Data)."""

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=_p384)
    days: int = 3650
    ocsp_url: str = "http://ocsp.rim.test"  # in the CA's and the signer's AIA
    ocsp_next_update: datetime.datetime = CRL_NEXT_UPDATE
    revoked: set[int] = field(default_factory=set)  # serials the responder says are revoked

    def __post_init__(self) -> None:
        self.ca_key, self.key = _p384(), _p384()
        ca_name = "Test NVIDIA Reference Value CA"
        aia = x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(
                self.ocsp_url))])
        self.root = certificate(RIM_ROOT_NAME, RIM_ROOT_NAME, self.root_key.public_key(),
                                self.root_key, ca=True)
        self.ca = certificate(ca_name, RIM_ROOT_NAME, self.ca_key.public_key(), self.root_key,
                              ca=True, more=(aia,))
        self.leaf = certificate("Test RIM signer", ca_name, self.key.public_key(), self.ca_key,
                                ca=False, days=self.days, more=(aia,))

    def ocsp(self, serial: int) -> bytes:
        """The responder's answer about the CA's or the signer's certificate, signed by its
        issuer: good, or revoked when listed in `revoked`."""
        cert, issuer, key = (self.leaf, self.ca, self.ca_key) \
            if serial == self.leaf.serial_number else (self.ca, self.root, self.root_key)
        revoked = serial in self.revoked
        response = ocsp.OCSPResponseBuilder().add_response(
            cert=cert, issuer=issuer, algorithm=hashes.SHA384(),
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=START, next_update=self.ocsp_next_update,
            revocation_time=START if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer).sign(key, hashes.SHA384())
        return response.public_bytes(serialization.Encoding.DER)

    async def responder(self, cert: x509.Certificate, issuer: x509.Certificate,
                        url: str) -> bytes:
        """As CollateralStore.ocsp answers, without the network."""
        assert url == self.ocsp_url
        return self.ocsp(cert.serial_number)

    def unsigned(self, version: str, measurements: dict[int, list[bytes]], *,
                 inactive: tuple[int, ...] = ()) -> Any:
        """The SWID tag before signing: `measurements` are RIM indices (SPDM block - 1) and
        their allowed values; `inactive` indices are listed with zeros, not to be compared."""
        root = etree.Element(f"{{{SWID_NS}}}SoftwareIdentity",
                             nsmap={None: SWID_NS, "ns2": SHA384_NS}, name="GH100",
                             tagId=os.urandom(8).hex(), version="1.0")
        etree.SubElement(root, f"{{{SWID_NS}}}Entity", name="NVIDIA Corporation",
                         role="softwareCreator tagCreator")
        etree.SubElement(root, f"{{{SWID_NS}}}Meta", colloquialVersion=version,
                         product="GH100")
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        rows = {**{i: (False, [bytes(48)]) for i in inactive},
                **{i: (True, v) for i, v in measurements.items()}}
        for index, (active, values) in sorted(rows.items()):
            resource = etree.SubElement(payload, f"{{{SWID_NS}}}Resource", type="Measurement",
                                        index=str(index), active=str(active),
                                        alternatives=str(len(values)),
                                        name=f"Measurement_{index}", size="48")
            for n, value in enumerate(values):
                resource.set(f"{{{SHA384_NS}}}Hash{n}", value.hex())
        return root

    def sign(self, tree: Any, *, key: ec.EllipticCurvePrivateKey | None = None,
             reference_uri: str | None = None) -> bytes:
        signer = XMLSigner(method=methods.enveloped,
                           signature_algorithm=SignatureMethod.ECDSA_SHA384,
                           digest_algorithm=DigestAlgorithm.SHA384,
                           c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1)
        pem = [c.public_bytes(serialization.Encoding.PEM).decode()
               for c in (self.leaf, self.ca, self.root)]
        signed = signer.sign(tree, key=key or self.key, cert=pem,
                             reference_uri=reference_uri)
        return bytes(etree.tostring(signed))

    def rim(self, version: str, measurements: dict[int, list[bytes]], *,
            inactive: tuple[int, ...] = ()) -> bytes:
        return self.sign(self.unsigned(version, measurements, inactive=inactive))

    def served(self, rim: bytes, rim_id: str) -> bytes:
        """What NVIDIA's RIM service answers at /v1/rim/<id>."""
        return json.dumps({"id": rim_id, "rim": base64.b64encode(rim).decode(),
                           "sha256": hashlib.sha256(rim).hexdigest()}).encode()

    def root_pem(self, path: Path) -> str:
        path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        return str(path)


def spdm_evidence(key: ec.EllipticCurvePrivateKey, nonce: bytes,
                  measurements: dict[int, bytes], opaque: bytes = b"opaq") -> bytes:
    """An SPDM 1.1 GET_MEASUREMENTS request with `nonce` and its response signed by `key`
    (`opaque`: the opaque data, see `gpu_opaque`)."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\0"
    record = b"".join(struct.pack("<BBH", i, 1, len(v) + 3) + struct.pack("<BH", 1, len(v))
                      + v for i, v in sorted(measurements.items()))
    response = (bytes([0x11, 0x60, 0, 0, len(measurements)])
                + len(record).to_bytes(3, "little") + record + os.urandom(32)
                + struct.pack("<H", len(opaque)) + opaque)
    r, s = decode_dss_signature(key.sign(request + response, ec.ECDSA(hashes.SHA384())))
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


# -- One of each, as the gateway meets them: roots, a token service, evidence documents.

TOKEN_ISSUER = "https://attestation.test"
DEFAULT_TCB = Tcb(bootloader=3, tee=0, snp=8, microcode=115)


@dataclass
class Vendors:
    amd: SnpTestCa = field(default_factory=SnpTestCa)
    intel: TdxTestCa = field(default_factory=TdxTestCa)
    nvidia: GpuTestCa = field(default_factory=GpuTestCa)
    tcb: Tcb = DEFAULT_TCB
    token_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.vcek_key, self.vcek = self.amd.vcek(self.tcb)

    def roots(self) -> Roots:
        """What a test hands the verifier instead of the pinned roots."""
        return Roots(amd=self.amd.roots, intel=self.intel.root, nvidia=self.nvidia.root)

    def jwks(self) -> dict[str, Any]:
        """The test attestation service's key set, as its JWKS URL serves it."""
        return {"keys": [jwk(self.token_key, "k1")]}

    def token(self, bound: bytes, *, now: float, key: ec.EllipticCurvePrivateKey | None = None,
              headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """The service's verdict on this binding: ten minutes from `now` unless `claims` say."""
        body = {"iss": TOKEN_ISSUER, "iat": int(now), "exp": int(now) + 600,
                "eat_nonce": bound.hex(), **claims}
        return jwt.encode(body, key or self.token_key, algorithm="ES256",
                          headers={"kid": "k1", **(headers or {})})

    def evidence(self, bound: bytes, *, kind: str = "sev-snp",
                 measurement: bytes = MEASUREMENT, endorsed: bool = True, gpu: bool = False,
                 tokens: tuple[str, ...] = (),
                 next_update: str = "2030-01-01T00:00:00Z",
                 ocsp: bytes | None = None, stapled: bool = True,
                 gpu_measurements: dict[int, bytes] | None = None,
                 gpu_opaque: bytes = b"opaq", gpus: int = 1) -> dict[str, Any]:
        """The document a confidential machine answers with, every part bound to `bound`.
        `endorsed`: it sends its VCEK / TDX collateral (else the gateway fetches them);
        `gpu`: with the GPU's measurements, asked with the first half of the binding, and
        the OCSP response about its certificate stapled (`ocsp`, a good one unless given;
        none with `stapled=False`: the gateway asks the responder); `gpu_measurements` (SPDM
        block -> value) and `gpu_opaque` replace the GPU's defaults; `gpus`: how many GPUs
        (the test NVIDIA's devices 0..gpus-1, each its own key; `ocsp` is about the first)."""
        if kind == "tdx":
            quote = self.intel.quote(report_data=bound, mrtd=measurement)
            part: dict[str, Any] = {"format": "tdx", "quote": base64.b64encode(quote).decode()}
            if endorsed:
                part["collateral"] = {**self.intel.collateral(next_update=next_update),
                                      "pck_crl": base64.b64encode(self.intel.pck_crl()).decode()}
        else:
            report = snp_report(self.vcek_key, report_data=bound, measurement=measurement,
                                tcb=self.tcb)
            part = {"format": "sev-snp", "report": base64.b64encode(report).decode()}
            if endorsed:
                part["vcek"] = base64.b64encode(self.vcek).decode()
        parts = [part, *({"format": "token", "token": token} for token in tokens)]
        if gpu:
            parts += [self.nvidia.part(bound[:32], device, measurements=gpu_measurements,
                                       opaque=gpu_opaque, ocsp=ocsp if device == 0 else None,
                                       stapled=stapled) for device in range(gpus)]
        return {"evidence": parts}


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid,
            "alg": "ES256"}


def self_signed(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS certificate as a TEE makes for itself (valid around now, for localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def tls_context(directory: Path, name: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context presenting a fresh `self_signed` certificate (its files written to
    `directory` as <name>.crt and <name>.key); returns the context and the certificate's DER."""
    key, cert = self_signed(name)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert.public_bytes(serialization.Encoding.DER)
