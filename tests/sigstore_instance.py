"""A private Sigstore for tests, since public-good bundles are signed by keys nobody has and
name releases nobody can make up: a Fulcio-like CA issuing short-lived leaves with the GitHub
Actions OIDC extensions (1.3.6.1.4.1.57264.1.x) and the workflow's SAN URI, a CT log signing
the embedded SCT the verifier requires, and a Rekor signing the checkpoint and the inclusion
promise over a real RFC 6962 Merkle tree. `trusted_root()` names these keys, so the unmodified
`sigstore` verifier runs against them offline; `bundle()` signs an in-toto statement the way a
release workflow does (a DSSE envelope logged as a dsse/0.0.1 entry)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
MULTIPLATFORM = "https://tinfoil.sh/predicate/snp-tdx-multiplatform/v1"
HARDWARE = "https://tinfoil.sh/predicate/hardware-measurements/v1"
IN_TOTO = "application/vnd.in-toto+json"
SIGNED_AT = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
ROOT_FROM = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
SCT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
FILLER_ENTRIES = 6  # other releases logged before ours: the proof has real siblings


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(key: ec.EllipticCurvePrivateKey) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _utf8(value: str) -> bytes:
    """A DER UTF8String: the encoding of Fulcio's v2 extensions (1.8 onwards)."""
    raw = value.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


def _octet_string(value: bytes) -> bytes:
    length = len(value)
    head = bytes([length]) if length < 128 else bytes([0x82]) + struct.pack("!H", length)
    return b"\x04" + head + value


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below n (RFC 6962 section 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def tree_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(tree_root(leaves[:k]), tree_root(leaves[k:]))


def audit_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), from the leaf's sibling up."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*audit_path(index, leaves[:k]), tree_root(leaves[k:])]
    return [*audit_path(index - k, leaves[k:]), tree_root(leaves[:k])]


@dataclass(frozen=True)
class Workflow:
    """The GitHub Actions run that signs: what Fulcio copies from its OIDC token."""

    repository: str = "veil-test/confidential-model"
    path: str = ".github/workflows/release.yml"
    ref: str = "refs/tags/v1.4.2"
    sha: str = "a" * 40
    issuer: str = GITHUB_ISSUER

    @property
    def identity(self) -> str:
        return f"https://github.com/{self.repository}/{self.path}@{self.ref}"


def multiplatform_statement(snp: str, rtmr1: str, rtmr2: str,
                            subject_digest: str = "b" * 64) -> dict[str, Any]:
    return {"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "tinfoil-deployment.json",
                         "digest": {"sha256": subject_digest}}],
            "predicateType": MULTIPLATFORM,
            "predicate": {"snp_measurement": snp,
                          "tdx_measurement": {"rtmr1": rtmr1, "rtmr2": rtmr2}}}


@dataclass
class PrivateSigstore:
    """One private instance: the CA, the CT log and Rekor keys, and the log's entries."""

    name: str = "veil-test"
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    ct_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    rekor_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ca: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name}-fulcio")])
        public = self.ca_key.public_key()
        self.ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(ROOT_FROM)
                   .not_valid_after(ROOT_FROM + datetime.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                False, False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                                  critical=False)
                   .sign(self.ca_key, hashes.SHA384()))

    # -- the trust root ------------------------------------------------------------------

    def trusted_root(self) -> dict[str, Any]:
        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_spki(key)),
                                  "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                  "validFor": {"start": "2024-01-01T00:00:00Z"}},
                    "logId": {"keyId": _b64(_key_id(key))}}

        return {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                "tlogs": [log(self.rekor_key, f"https://rekor.{self.name}.test")],
                "certificateAuthorities": [{
                    "subject": {"organization": self.name, "commonName": f"{self.name}-fulcio"},
                    "uri": f"https://fulcio.{self.name}.test",
                    "certChain": {"certificates": [
                        {"rawBytes": _b64(self.ca.public_bytes(serialization.Encoding.DER))}]},
                    "validFor": {"start": "2024-01-01T00:00:00Z"}}],
                "ctlogs": [log(self.ct_key, f"https://ctfe.{self.name}.test")],
                "timestampAuthorities": []}

    # -- Fulcio: a leaf for one workflow run, with its SCT --------------------------------

    def leaf(self, workflow: Workflow, key: ec.EllipticCurvePrivateKey,
             at: datetime.datetime) -> x509.Certificate:
        builder = self._leaf_builder(workflow, key, at)
        precert = builder.sign(self.ca_key, hashes.SHA384())
        sct = self._sct(precert, at)
        return builder.add_extension(x509.UnrecognizedExtension(SCT_OID, sct),
                                     critical=False).sign(self.ca_key, hashes.SHA384())

    def _leaf_builder(self, workflow: Workflow, key: ec.EllipticCurvePrivateKey,
                      at: datetime.datetime) -> x509.CertificateBuilder:
        repo_uri = f"https://github.com/{workflow.repository}"
        v1 = {"1": workflow.issuer, "2": "push", "3": workflow.sha, "4": "release",
              "5": workflow.repository, "6": workflow.ref}
        v2 = {"8": workflow.issuer, "9": workflow.identity, "12": repo_uri,
              "13": workflow.sha, "14": workflow.ref}
        builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
                   .issuer_name(self.ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(at - datetime.timedelta(seconds=30))
                   .not_valid_after(at + datetime.timedelta(minutes=10))
                   .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                                False, False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.ca_key.public_key()), critical=False)
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.UniformResourceIdentifier(workflow.identity)]), critical=True))
        for arc, value in v1.items():
            builder = builder.add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{arc}"), value.encode()),
                critical=False)
        for arc, value in v2.items():
            builder = builder.add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{arc}"), _utf8(value)),
                critical=False)
        return builder

    def _sct(self, precert: x509.Certificate, at: datetime.datetime) -> bytes:
        """The embedded SCT list (RFC 6962 section 3.3), its extension value DER-wrapped."""
        millis = int(at.timestamp() * 1000)
        issuer_hash = hashlib.sha256(self.ca_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
        tbs = precert.tbs_certificate_bytes
        signed = (struct.pack("!BBQH", 0, 0, millis, 1) + issuer_hash
                  + struct.pack("!I", len(tbs))[1:] + tbs + struct.pack("!H", 0))
        signature = _sign(self.ct_key, signed)
        sct = (struct.pack("!B", 0) + _key_id(self.ct_key) + struct.pack("!QH", millis, 0)
               + struct.pack("!BBH", 4, 3, len(signature)) + signature)
        listed = struct.pack("!H", len(sct)) + sct
        return _octet_string(struct.pack("!H", len(listed)) + listed)

    # -- Rekor: the entry, its place in the tree, the checkpoint and the promise ----------

    def bundle(self, statement: dict[str, Any], workflow: Workflow | None = None,
               at: datetime.datetime = SIGNED_AT, log_index: int = 41_000_000 + FILLER_ENTRIES
               ) -> dict[str, Any]:
        """A v0.3 bundle: DSSE envelope over the statement, the leaf, and one tlog entry."""
        workflow = workflow or Workflow()
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.leaf(workflow, key, at)
        payload = json.dumps(statement).encode()
        pae = b"DSSEv1 %d %s %d %s" % (len(IN_TOTO), IN_TOTO.encode(), len(payload), payload)
        signature = _sign(key, pae)
        envelope = {"payload": _b64(payload), "payloadType": IN_TOTO,
                    "signatures": [{"sig": _b64(signature)}]}
        pem = leaf.public_bytes(serialization.Encoding.PEM)
        body = rfc8785.dumps({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {"envelopeHash": {"algorithm": "sha256",
                                      "value": hashlib.sha256(rfc8785.dumps(envelope)).hexdigest()},
                     "payloadHash": {"algorithm": "sha256",
                                     "value": hashlib.sha256(payload).hexdigest()},
                     "signatures": [{"signature": _b64(signature), "verifier": _b64(pem)}]}})
        return {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                "verificationMaterial": {
                    "certificate": {"rawBytes": _b64(leaf.public_bytes(
                        serialization.Encoding.DER))},
                    "tlogEntries": [self.log_entry(body, int(at.timestamp()), log_index)]},
                "dsseEnvelope": envelope}

    def log_entry(self, body: bytes, integrated: int, log_index: int) -> dict[str, Any]:
        leaves = [_leaf_hash(b"earlier release %d" % i) for i in range(FILLER_ENTRIES)]
        leaves += [_leaf_hash(body), _leaf_hash(b"a later release")]
        tree_index = FILLER_ENTRIES
        root = tree_root(leaves)
        log_id = _key_id(self.rekor_key)
        note = f"rekor.{self.name}.test - 1193050959916656506\n{len(leaves)}\n{_b64(root)}\n"
        checkpoint = note + f"\n\u2014 rekor.{self.name}.test " + _b64(
            log_id[:4] + _sign(self.rekor_key, note.encode())) + "\n"
        promise = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated,
                                 "logID": log_id.hex(), "logIndex": log_index})
        return {"logIndex": str(log_index), "logId": {"keyId": _b64(log_id)},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": str(integrated),
                "inclusionPromise": {"signedEntryTimestamp": _b64(
                    _sign(self.rekor_key, promise))},
                "inclusionProof": {"logIndex": str(tree_index), "rootHash": _b64(root),
                                   "treeSize": str(len(leaves)),
                                   "hashes": [_b64(h) for h in audit_path(tree_index, leaves)],
                                   "checkpoint": {"envelope": checkpoint}},
                "canonicalizedBody": _b64(body)}
