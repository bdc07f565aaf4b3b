"""The soak of `tests/integration/test_soak.py`, longer: `veil serve` in front of three chaos
upstreams (delays, 500s, 429s, 503s, resets mid-body, malformed SSE, truncated JSON, stalls
past the read timeout), concurrent clients whose prompts carry unique canaries. Prints a table:
requests by outcome, latency, canaries leaked, RSS at start, after the warm-up and at the end.

Run: .venv/bin/python tests/bench/soak.py [--duration 300] [--clients 200] [--warmup 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))

from tests.integration.chaos import SoakResult, soak


def table(result: SoakResult, clients: int) -> str:
    outcomes = result.outcomes
    statuses = sorted((k for k in outcomes if k.isdigit()), key=int)
    rows = [
        ("requests", f"{result.requests:,} ({result.requests / result.wall_s:.0f}/s over "
                     f"{result.wall_s:.0f} s, {clients} clients)"),
        *((f"status {s}" + (" (valid JSON, canaries restored)" if s == "200" else
                            " (error envelope)"), f"{outcomes[s]:,}") for s in statuses),
        ("stream complete (`[DONE]` after a finish, canaries restored)",
         f"{outcomes['stream_complete']:,}"),
        ("stream ended by an error event", f"{outcomes['stream_error']:,}"),
        ("invariant broken (hung, bad JSON, bad envelope, bad stream, connection error)",
         f"{sum(result.bad.values()):,}" + (f" {dict(result.bad)}" if result.bad else "")),
        ("latency p50 / p99",
         f"{result.percentile(0.5):.0f} ms / {result.percentile(0.99):.0f} ms"),
        ("canaries leaked: upstream bodies / gateway log lines",
         f"{len(result.upstream_leaks)} of {result.upstream_requests:,} / "
         f"{len(result.log_leaks)} of {result.log_lines:,}"),
        ("RSS start / after warm-up / end (peak)",
         f"{result.rss_start_kib / 1024:.1f} / {result.rss_warm_kib / 1024:.1f} / "
         f"{result.rss_end_kib / 1024:.1f} MiB ({result.rss_peak_kib / 1024:.1f})"),
        ("RSS growth, warm-up to end", f"{result.rss_growth:+.1%}"),
        ("gateway died / exit code", f"{result.died or 'no'} / {result.exit_code}"),
    ]
    lines = ["| measure | value |", "|---|---:|", *(f"| {a} | {b} |" for a, b in rows)]
    upstream = ", ".join(f"{k} {v:,}" for k, v in result.behaviours.most_common())
    return "\n".join(lines) + f"\n\nUpstream behaviours chosen: {upstream}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of load before the warm RSS sample")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(soak(duration_s=args.duration, warmup_s=args.warmup,
                              clients=args.clients, seed=args.seed))
    print(f"{datetime.date.today()}, {os.cpu_count()} cores, {args.duration:.0f} s, "
          f"{args.clients} clients, warm-up {args.warmup:.0f} s\n")
    print(table(result, args.clients))
    if result.bad or result.upstream_leaks or result.log_leaks or result.died:
        print("\n" + result.summary())
        sys.exit(1)


if __name__ == "__main__":
    main()
