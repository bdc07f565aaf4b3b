"""Where the gateway's secrets are kept and what is asked of them (gateway/keys/sources.py)."""
