"""Why a backend got no verdict. Messages name what failed and the values measured, never a
secret: evidence is public by design (it is meant to be shown to any verifier).

    EvidenceError       the evidence is malformed, does not verify, or is not bound to this
     |                  gateway's nonce and the backend's TLS key
     +-- FetchError     a remote party (the backend, a key set, AMD KDS, Intel PCS) could not be
                        reached, ran out of time, presented another certificate than the pinned
                        one, or answered more than the limit

Both mean the same to the gateway, no verdict (fail closed); the subclass lets the log say
whether the evidence was refused or never arrived.
"""

from __future__ import annotations


class EvidenceError(Exception):
    """The evidence is malformed, does not verify, or does not meet the trust level."""


class FetchError(EvidenceError):
    """Something the verification needs could not be fetched."""
