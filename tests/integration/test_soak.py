"""The soak: `veil serve` (a real process) in front of three chaos upstreams (delays, 500s,
429s, 503s, resets mid-body, malformed SSE, truncated JSON, stalls past the read timeout), 200
concurrent clients whose prompts carry unique canaries, about a minute in all.

Invariants, not routing: the gateway never dies and stops cleanly; every request finishes
well within the client's timeout; no canary reaches an upstream or the gateway's logs; every
200 is valid JSON with the canaries restored; every error is the JSON envelope with an
expected status; every stream either completes (`[DONE]` after a finish) or ends with an error
event; RSS grows less than 10% from the end of the warm-up to the end of the run.
The longer run is `tests/bench/soak.py`.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests.integration.chaos import Canaries, _leaks, soak

CLIENTS = 200
DURATION_S = 45.0  # of load, the first WARMUP_S of it before the warm RSS sample
WARMUP_S = 12.0
CLIENT_TIMEOUT_S = 30.0  # far above what the gateway may take (3 backends x 2 s read timeout)
MAX_RSS_GROWTH = 0.10


def test_leak_check_sees_a_canary() -> None:
    """The leak scan is not vacuous: a canary, whole or cut, is found."""
    canaries = Canaries.make(1, random.Random(0))
    values = set(canaries.values())
    assert len(_leaks([canaries.prompt()], values)) == 4
    assert _leaks([f"x {canaries.card[:19]} y"], values)
    assert _leaks(['"content": "<EMAIL_1> <PHONE_1> <CREDIT_CARD_1> <SECRET_1>"'], values) == []


async def test_soak(tmp_path: Path) -> None:
    result = await soak(duration_s=DURATION_S, warmup_s=WARMUP_S, clients=CLIENTS,
                        client_timeout_s=CLIENT_TIMEOUT_S, directory=tmp_path)
    summary = result.summary()
    assert result.died is None, summary
    assert result.exit_code == 0, summary  # stopped by SIGTERM, cleanly
    assert result.outcomes["bad_hung"] == 0, summary
    assert not result.bad, summary
    assert result.upstream_requests > 0, summary
    assert not result.upstream_leaks, summary
    assert result.log_lines > 0, summary
    assert not result.log_leaks, summary
    assert result.log_tracebacks == 0, summary
    # The chaos was felt: successes, restored streams, broken streams and error answers.
    for outcome in ("200", "stream_complete", "stream_error", "429", "502"):
        assert result.outcomes[outcome] > 0, (outcome, summary)
    assert result.rss_warm_kib > 0, summary
    assert result.rss_growth < MAX_RSS_GROWTH, summary
