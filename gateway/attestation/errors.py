"""Why evidence was refused. Messages name what failed and the values measured, never a
secret: evidence is public by design (it is meant to be shown to any verifier)."""

from __future__ import annotations


class EvidenceError(Exception):
    """The evidence is malformed, does not verify, or does not meet the trust level."""
