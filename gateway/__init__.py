"""Veil: a privacy-preserving gateway in front of OpenAI- and Anthropic-compatible model servers."""

import os
from importlib.metadata import PackageNotFoundError, version

try:  # one source of truth: pyproject.toml, as installed
    __version__ = version("veil-gateway")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# prometheus_client turns multiprocess mode on when this variable is present at all, even empty,
# and then writes its files into the working directory; the gateway treats empty as unset. It
# must be settled before prometheus_client is first imported, which is why it is done here.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]
