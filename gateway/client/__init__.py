"""For applications in front of Veil: verify the gateway before sending it anything
(attested.py: an httpx transport for the openai and anthropic SDKs; verify.py: the check)."""
