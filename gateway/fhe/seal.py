"""CKKS parameters and the careful handling of SEAL objects (TenSEAL's `sealapi` bindings).

Parameters are fixed: N = 8192, coefficient moduli [60, 40, 60], scale 2^40 (128-bit security;
about 5e-6 error on unit vectors; one multiply-and-rescale of depth, which a dot product needs).

Everything that arrives from another party is validated before SEAL parses it: the SEAL header
(magic, version, compression, declared size equal to the bytes received, a hard size limit),
zstd bodies decompressed here with a bounded output (a small reply cannot inflate into gigabytes
in the process that holds the secret key), then SEAL's own `load`, which checks the data against
the context, then the metadata the protocol expects (parameters level, two polynomials, scale).
The sealapi bindings read and write files only, so objects pass through anonymous in-memory
files (Linux memfd: no name in any filesystem, gone when closed), so that the secret key, once
unsealed, never touches a disk; elsewhere, through a private temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import tenseal.sealapi as seal
import zstandard

from gateway.errors import CiphertextError

POLY_DEGREE = 8192
COEFF_BITS = [60, 40, 60]
SCALE = 2.0 ** 40
SEAL_MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, -, size
COMPRESSION_NONE, COMPRESSION_ZSTD = 0, 2
MAX_CIPHERTEXT_BYTES = 300 * 1024


def parameters() -> seal.EncryptionParameters:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_DEGREE)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_DEGREE, COEFF_BITS))
    return parms


def new_context() -> seal.SEALContext:
    context = seal.SEALContext(parameters(), True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise RuntimeError(f"CKKS parameters refused: {context.parameters_error_message()}")
    return context


def galois_element(step: int) -> int:
    """SEAL's Galois element for a left rotation by `step` slots (3^step mod 2N)."""
    if not 0 < step < POLY_DEGREE // 2:
        raise ValueError(f"rotation step {step} out of range")
    return pow(3, step, 2 * POLY_DEGREE)


@cache
def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="veil-fhe-"))  # 0700, for systems without memfd


@contextlib.contextmanager
def _scratch_file(data: bytes | None = None) -> Iterator[Path]:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        descriptor = os.memfd_create("veil-fhe", os.MFD_CLOEXEC)
        try:
            view = memoryview(data or b"")
            while view:
                view = view[os.write(descriptor, view):]
            yield Path(f"/proc/self/fd/{descriptor}")
        finally:
            os.close(descriptor)
        return
    descriptor, name = tempfile.mkstemp(dir=_scratch())
    path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if data is not None:
                handle.write(data)
        yield path
    finally:
        path.unlink(missing_ok=True)


def to_bytes(obj: Any) -> bytes:
    """Serialize a SEAL object (or Serializable) through a private file."""
    with _scratch_file() as path:
        obj.save(str(path))
        return path.read_bytes()


def load(obj: Any, context: seal.SEALContext, data: bytes) -> None:
    """SEAL's own `load`, which validates against the context (for trusted bytes, e.g. our
    own keys at rest, and for evaluation keys the scorer receives from its gateway)."""
    with _scratch_file(data) as path:
        obj.load(context, str(path))


def checked_ciphertext(context: seal.SEALContext, data: bytes, *,
                       parms_id: list[int], max_bytes: int = MAX_CIPHERTEXT_BYTES
                       ) -> seal.Ciphertext:
    """A ciphertext from untrusted bytes, or `CiphertextError`; never a partial parse."""
    uncompressed = _uncompressed(data, max_bytes)
    ciphertext = seal.Ciphertext()
    try:
        load(ciphertext, context, uncompressed)
    except (ValueError, RuntimeError) as exc:
        raise CiphertextError(f"SEAL refused the ciphertext: {type(exc).__name__}") from None
    if list(ciphertext.parms_id()) != list(parms_id):
        raise CiphertextError("ciphertext is at an unexpected level")
    if ciphertext.size() != 2 or not ciphertext.is_ntt_form():
        raise CiphertextError(f"ciphertext has {ciphertext.size()} polynomials, expected 2")
    if abs(ciphertext.scale / SCALE - 1) > 1e-3:
        raise CiphertextError("ciphertext has an unexpected scale")
    return ciphertext


def _uncompressed(data: bytes, max_bytes: int) -> bytes:
    if len(data) < HEADER.size or len(data) > max_bytes:
        raise CiphertextError(f"ciphertext of {len(data)} bytes (limit {max_bytes})")
    magic, header_size, major, minor, compression, _, size = HEADER.unpack_from(data)
    if magic != SEAL_MAGIC or header_size != HEADER.size or major != 4:
        raise CiphertextError("not a SEAL 4 object")
    if size != len(data):
        raise CiphertextError(f"header says {size} bytes, {len(data)} received")
    if compression == COMPRESSION_NONE:
        return data
    if compression != COMPRESSION_ZSTD:
        raise CiphertextError(f"unsupported compression {compression}")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data[HEADER.size:]))
    try:
        body = reader.read(max_bytes + 1)
    except zstandard.ZstdError:
        raise CiphertextError("corrupt zstd body") from None
    if len(body) > max_bytes:
        raise CiphertextError(f"ciphertext inflates beyond {max_bytes} bytes")
    header = HEADER.pack(SEAL_MAGIC, HEADER.size, major, minor, COMPRESSION_NONE, 0,
                         HEADER.size + len(body))
    return header + body
