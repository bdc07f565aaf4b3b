"""What keeping the gateway's keys in a PKCS#11 token costs (SoftHSM2, a token in this process;
a network HSM adds its round trip to every token row), medians:

    hmac-memory       HMAC-SHA256 of an audit-sized record (600 bytes), key in memory
    hmac-token        the same, computed by the token (CKM_SHA256_HMAC): what every audit
                      record pays with audit.key_hsm_label
    audit-file        AuditLog.append, key from a file (MAC, JSON, write, flush)
    audit-token       AuditLog.append, the token making the MAC
    hash-derived      the `hash` action on one value with the tenant's key derived by the
                      token once and held in memory (what every hashed value pays)
    hash-per-call     the same if the token were asked for the tenant key on every value
                      (the design not chosen)
    seal-memory       AES-GCM of a CKKS secret key (its serialized size), key in memory
    seal-token        the same in the token (CKM_AES_GCM): once per epoch, at start or rotation
    unseal-token      opening it in the token
Run: .venv/bin/python tests/bench/hsm_keys.py
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.fhe.seal import new_context, to_bytes
from gateway.keys.material import TokenDeriver, TokenSealer, TokenSigner
from gateway.keys.token import Token
from gateway.observability.audit import AuditLog
from gateway.settings import HsmSettings
from tests.softhsm import PIN, PIN_ENV, SoftHsm


def median_us(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    import tenseal.sealapi as seal  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-hsm-"))
    softhsm = SoftHsm(tmp)
    token = Token.open(HsmSettings.model_validate(softhsm.section()), {PIN_ENV: PIN})
    labels = softhsm.labels()
    for name in ("audit", "hash"):
        token.create(labels[name], "hmac")
    token.create(labels["fhe"], "aes")
    record = os.urandom(600)
    memory_key = secrets.token_bytes(32)
    signer = TokenSigner(token, labels["audit"])
    file_log = AuditLog(tmp / "file.jsonl", memory_key)
    token_log = AuditLog(tmp / "token.jsonl", signer)
    facts = {"request_id": "req_" + "0" * 32, "tenant": "bench", "route": "chat_completions",
             "status": 200, "entities": {"EMAIL": 1}, "stages_ms": {"inspect": 0.4}}
    deriver = TokenDeriver(token, labels["hash"])

    def hashed_value() -> str:
        tenant_key = deriver.derive(b"veil-hash-v1:bench")
        return hmac.new(tenant_key, b"jane.doe@example.com", hashlib.sha256).hexdigest()[:16]

    def hashed_asking_the_token() -> str:
        tenant_key = token.hmac(labels["hash"], 1, b"veil-hash-v1:bench")
        return hmac.new(tenant_key, b"jane.doe@example.com", hashlib.sha256).hexdigest()[:16]

    secret_key = to_bytes(seal.KeyGenerator(new_context()).secret_key())
    sealer = TokenSealer(token, labels["fhe"])
    aead = AESGCM(memory_key)
    nonce = secrets.token_bytes(12)
    sealed = sealer.encrypt(nonce, secret_key, b"fhe-id")
    rows = [
        ("hmac-memory", median_us(lambda: hmac.new(memory_key, record, hashlib.sha256).digest(),
                                  5000)),
        ("hmac-token", median_us(lambda: signer.sign(record), 2000)),
        ("audit-file", median_us(lambda: file_log.append(facts), 2000)),
        ("audit-token", median_us(lambda: token_log.append(facts), 2000)),
        ("hash-derived", median_us(hashed_value, 5000)),
        ("hash-per-call", median_us(hashed_asking_the_token, 2000)),
        ("seal-memory", median_us(lambda: aead.encrypt(nonce, secret_key, b"fhe-id"), 50)),
        ("seal-token", median_us(lambda: sealer.encrypt(nonce, secret_key, b"fhe-id"), 50)),
        ("unseal-token", median_us(lambda: sealer.decrypt(nonce, sealed, b"fhe-id"), 50)),
    ]
    file_log.close()
    token_log.close()
    token.close()
    print(f"{'case':<16}{'median':>12}   (CKKS secret key: {len(secret_key)} bytes)")
    for name, micros in rows:
        print(f"{name:<16}{micros:>9.1f} us")


if __name__ == "__main__":
    main()
