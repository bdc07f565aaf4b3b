"""Confidential-computing evidence: verify it, bind it to the TLS key, decide trust."""
