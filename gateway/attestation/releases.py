"""Launch measurements from signed releases: a trust level's `measurements_from` names Sigstore
bundles that a release workflow published, and a machine must be measured as one of them says,
so approving an image means pinning who builds it rather than copying digests.

    measurements_from:
      - bundle: releases/v1.4.2.sigstore.json      # relative to the policy file
        # url: https://.../v1.4.2.sigstore.json    # fetched once if `bundle` is missing, and
        #                                          # kept there only after it verified
        repository: tinfoilsh/confidential-model
        workflow: .github/workflows/release.yml
        ref: refs/tags/v.*                           # a regex the signing ref matches in full
        # issuer: https://token.actions.githubusercontent.com
        # predicate_type: https://tinfoil.sh/predicate/snp-tdx-multiplatform/v1
        # trusted_root: sigstore/trusted_root.json  # default: the public-good root sigstore ships

A release vouches for its measurements as a whole: a TDX quote meets it only when every register
one of its measurements names (RTMR1 and RTMR2 of a multiplatform release, MRTD and RTMR0 of one
platform of a hardware-measurements release) equals that measurement's value, so registers from
two releases (or two platforms) never combine into a set that no release produced
(`TrustLevel.release_problems`, gateway/attestation/levels.py).

A bundle counts only when the real `sigstore` verifier accepts it offline against a pinned
trust root: the Fulcio chain at the logged time, the embedded SCT, the signer's identity (OIDC
issuer and the workflow's SAN URI), the DSSE signature, the log entry's consistency with the
envelope, the Merkle inclusion proof against the signed checkpoint and the inclusion promise.
Verification fetches nothing (no TUF refresh, no Rekor lookup; a `url` is asked only while its
bundle file is missing); measurements are read from the verified statement only. The module
imports `sigstore` when a bundle is verified, not before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import EvidenceError

if TYPE_CHECKING:
    from cryptography.x509 import Certificate
    from sigstore.models import Bundle, TrustedRoot

GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"
PredicateType = Literal["https://tinfoil.sh/predicate/snp-tdx-multiplatform/v1",
                        "https://tinfoil.sh/predicate/hardware-measurements/v1"]
MULTIPLATFORM: PredicateType = "https://tinfoil.sh/predicate/snp-tdx-multiplatform/v1"
HARDWARE: PredicateType = "https://tinfoil.sh/predicate/hardware-measurements/v1"
IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
PUBLIC_GOOD_TUF = "https://tuf-repo-cdn.sigstore.dev"  # the directory sigstore ships its root in
# The public-good root as sigstore 4.5.1 ships it: a changed file in site-packages is refused,
# not trusted (a newer root is pinned by naming the file in the policy).
PUBLIC_GOOD_ROOT_SHA256 = "6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66"
MAX_BUNDLE_BYTES = 1 << 20
# Fulcio's extensions: the OIDC issuer (v2), the commit (v2 source digest, else v1 workflow sha)
ISSUER_V2_OID = "1.3.6.1.4.1.57264.1.8"
SOURCE_DIGEST_OID, WORKFLOW_SHA_OID = "1.3.6.1.4.1.57264.1.13", "1.3.6.1.4.1.57264.1.3"
HEX48 = re.compile(r"^[0-9a-f]{96}$")


class ReleaseSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: Annotated[str, Field(min_length=1)]
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    repository: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$")]
    workflow: Annotated[str, Field(pattern=r"^\.github/workflows/[A-Za-z0-9._/-]+\.ya?ml$")]
    ref: str = r"refs/tags/v.+"
    issuer: Annotated[str, Field(pattern=r"^https://")] = GITHUB_ACTIONS
    predicate_type: PredicateType = MULTIPLATFORM
    trusted_root: str | None = None

    @field_validator("ref")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"ref is not a regular expression: {exc}") from None
        return value

    @property
    def identity_prefix(self) -> str:
        return f"https://github.com/{self.repository}/{self.workflow}@"


Registers = Mapping[str, str]  # "snp", "mrtd", "rtmr0".."rtmr3" -> the value, lowercase hex


@dataclass(frozen=True)
class Measurement:
    """One set of register values a release signed together, for one kind of TEE: all of them
    must match for the release to vouch for the machine."""

    tee: Literal["sev-snp", "tdx"]
    registers: tuple[tuple[str, str], ...]  # (register, value)
    platform: str | None = None  # the hardware-measurements entry it came from

    def matches(self, measured: Registers) -> bool:
        return all(measured.get(name) == value for name, value in self.registers)


@dataclass(frozen=True)
class Release:
    """What one verified bundle vouches for, and where it came from."""

    repository: str
    workflow: str
    ref: str
    commit: str | None
    log_index: int
    integrated_time: int | None
    bundle: str
    bundle_sha256: str
    predicate_type: str = MULTIPLATFORM
    measurements: tuple[Measurement, ...] = ()

    @property
    def label(self) -> str:
        return (f"release {self.repository}@{self.ref.removeprefix('refs/tags/')} "
                f"(log index {self.log_index})")

    def for_tee(self, tee: str) -> list[Measurement]:
        return [m for m in self.measurements if m.tee == tee]

    def carries(self, tee: str, register: str) -> bool:
        return any(name == register for m in self.for_tee(tee) for name, _ in m.registers)

    def match(self, tee: str, measured: Registers) -> Measurement | None:
        """The one measurement of this release the machine's registers all equal, if any."""
        return next((m for m in self.for_tee(tee) if m.matches(measured)), None)


def verify_release(source: ReleaseSource, base: Path) -> Release:
    """The release `source` names, verified offline; `base` resolves relative paths."""
    path = base / source.bundle
    url = source.url if source.url is not None and not path.exists() else None
    raw = _read(path) if url is None else _fetched(url)
    if len(raw) > MAX_BUNDLE_BYTES:
        raise EvidenceError(f"{path}: larger than {MAX_BUNDLE_BYTES >> 10} KiB")
    bundle, statement = _verified(raw, source, trusted_root(source.trusted_root, base), path)
    found = _measurements(statement, source.predicate_type, path)
    if url is not None:
        _keep(path, raw)
    cert, entry = bundle.signing_certificate, bundle.log_entry._inner
    return Release(
        repository=source.repository, workflow=source.workflow,
        ref=_signing_identity(cert, source)[len(source.identity_prefix):],
        commit=_extension(cert, SOURCE_DIGEST_OID, WORKFLOW_SHA_OID),
        log_index=int(entry.log_index),
        integrated_time=int(entry.integrated_time) if entry.integrated_time else None,
        bundle=str(path), bundle_sha256="sha256:" + hashlib.sha256(raw).hexdigest(),
        predicate_type=source.predicate_type, measurements=found)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EvidenceError(f"{path}: cannot read the bundle ({exc.strerror})") from None


def _fetched(url: str) -> bytes:
    """A release's bundle never changes (a new release is a new bundle), so it is fetched
    once, when its file is missing; the file is the cache."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http/https)
            return bytes(response.read(MAX_BUNDLE_BYTES + 1))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EvidenceError(f"{url}: cannot fetch the bundle ({exc})") from None


def _keep(path: Path, raw: bytes) -> None:
    """The verified bundle, written whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(raw)
        partial.replace(path)
    except OSError as exc:
        raise EvidenceError(f"{path}: cannot keep the fetched bundle ({exc.strerror})") from None


def trusted_root(configured: str | None, base: Path) -> TrustedRoot:
    """The pinned root: the file the policy names, else the public-good root inside the
    installed sigstore package (a snapshot; pin a newer file when Sigstore rotates keys)."""
    from importlib import resources

    from sigstore.errors import Error
    from sigstore.models import TrustedRoot

    if configured is not None:
        path = base / configured
    else:
        path = Path(str(resources.files("sigstore") / "_store" / quote(PUBLIC_GOOD_TUF, safe="")
                        / "trusted_root.json"))
    try:
        if configured is None:
            _check_shipped(path)
        return TrustedRoot.from_file(str(path))
    except (OSError, ValueError, Error) as exc:
        raise EvidenceError(f"{path}: not a usable Sigstore trusted root ({exc})") from None


def _check_shipped(path: Path) -> None:
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != PUBLIC_GOOD_ROOT_SHA256:
        raise EvidenceError(f"{path} has sha256 {actual}, expected {PUBLIC_GOOD_ROOT_SHA256} "
                            "(the root sigstore 4.5.1 ships); name a pinned trusted_root instead")


def _verified(raw: bytes, source: ReleaseSource, root: TrustedRoot,
              path: Path) -> tuple[Bundle, dict[str, Any]]:
    from sigstore.errors import Error
    from sigstore.models import Bundle
    from sigstore.verify import Verifier

    try:
        bundle = Bundle.from_json(raw)
        payload_type, payload = Verifier(trusted_root=root).verify_dsse(
            bundle, WorkflowIdentity(source))
    except (Error, ValueError, TypeError, KeyError) as exc:
        raise EvidenceError(f"{path}: does not verify: {exc}") from None
    if payload_type != IN_TOTO:
        raise EvidenceError(f"{path}: payload type {payload_type!r} is not {IN_TOTO}")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise EvidenceError(f"{path}: the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") not in STATEMENT_TYPES:
        raise EvidenceError(f"{path}: the signed payload is not an in-toto statement")
    if statement.get("predicateType") != source.predicate_type:
        raise EvidenceError(f"{path}: predicate type {statement.get('predicateType')!r} is not "
                           f"{source.predicate_type!r}")
    return bundle, statement


class WorkflowIdentity:
    """A sigstore verification policy: the OIDC issuer (Fulcio's v2 extension when present,
    else v1) and a SAN URI naming this repository's workflow at a ref the pattern matches; the
    SAN check itself is sigstore's `Identity`."""

    def __init__(self, source: ReleaseSource) -> None:
        self._source = source

    def verify(self, cert: Certificate) -> None:
        from cryptography.x509 import ExtensionNotFound, ObjectIdentifier
        from sigstore.verify.policy import Identity, OIDCIssuer, OIDCIssuerV2

        try:
            cert.extensions.get_extension_for_oid(ObjectIdentifier(ISSUER_V2_OID))
            OIDCIssuerV2(self._source.issuer).verify(cert)
        except ExtensionNotFound:
            OIDCIssuer(self._source.issuer).verify(cert)
        Identity(identity=_signing_identity(cert, self._source)).verify(cert)


def _signing_identity(cert: Certificate, source: ReleaseSource) -> str:
    from cryptography.x509 import (
        ExtensionNotFound,
        SubjectAlternativeName,
        UniformResourceIdentifier,
    )
    from sigstore.errors import VerificationError

    try:
        sans = cert.extensions.get_extension_for_class(SubjectAlternativeName).value \
            .get_values_for_type(UniformResourceIdentifier)
    except ExtensionNotFound:
        sans = []
    prefix = source.identity_prefix
    for san in sans:
        if san.startswith(prefix) and re.fullmatch(source.ref, san[len(prefix):]):
            return san
    raise VerificationError(f"signed by {', '.join(sans) or 'no URI identity'}, not by "
                            f"{prefix}<ref matching {source.ref}>")


def _extension(cert: Certificate, *oids: str) -> str | None:
    """A Fulcio extension's text: v2 (DER UTF8String) or v1 (raw bytes), the first present."""
    from cryptography.x509 import ExtensionNotFound, ObjectIdentifier, UnrecognizedExtension

    for oid in oids:
        try:
            value = cert.extensions.get_extension_for_oid(ObjectIdentifier(oid)).value
        except ExtensionNotFound:
            continue
        if isinstance(value, UnrecognizedExtension):
            raw = value.value
            text = raw[2:] if raw[:1] == b"\x0c" and len(raw) == raw[1] + 2 else raw
            return text.decode(errors="replace")
    return None


def _measurements(statement: dict[str, Any], predicate_type: str,
                  path: Path) -> tuple[Measurement, ...]:
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise EvidenceError(f"{path}: the statement has no predicate")
    if predicate_type == MULTIPLATFORM:
        tdx = predicate.get("tdx_measurement")
        tdx = tdx if isinstance(tdx, dict) else {}
        snp = _hex48(predicate.get("snp_measurement"), "snp_measurement", path)
        return (Measurement("sev-snp", (("snp", snp),)),
                Measurement("tdx", (("rtmr1", _hex48(tdx.get("rtmr1"), "tdx_measurement.rtmr1",
                                                     path)),
                                    ("rtmr2", _hex48(tdx.get("rtmr2"), "tdx_measurement.rtmr2",
                                                     path)))))
    platforms = []
    for platform, values in sorted(predicate.items()):
        if not isinstance(values, dict):
            raise EvidenceError(f"{path}: platform {platform!r} has no measurements")
        platforms.append(Measurement("tdx", (
            ("mrtd", _hex48(values.get("mrtd"), f"{platform}.mrtd", path)),
            ("rtmr0", _hex48(values.get("rtmr0"), f"{platform}.rtmr0", path))), str(platform)))
    if not platforms:
        raise EvidenceError(f"{path}: the predicate lists no platform")
    return tuple(platforms)


def _hex48(value: object, name: str, path: Path) -> str:
    if not isinstance(value, str) or not HEX48.match(value.lower()):
        raise EvidenceError(f"{path}: {name} is not a 48-byte hex measurement")
    return value.lower()
