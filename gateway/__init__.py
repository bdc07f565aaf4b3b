"""Veil: a privacy-preserving gateway in front of OpenAI- and Anthropic-compatible model servers."""

__version__ = "0.1.0"
