"""Routing across several real upstreams: balancing, passive ejection, rest on 429/503 with
Retry-After, the retry budget, active probes, the backend's own words in errors, /readyz."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx2 as httpx
import pytest

from gateway.app import GATEWAY
from tests.integration.faults import FaultyUpstream
from tests.servers import TEST_KEY, ServerThread, backend, gateway_for, settings_for

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@contextmanager
def gateway(upstreams: dict[str, FaultyUpstream], routing: dict[str, Any] | None = None,
            **backend_extra: dict[str, Any]) -> Iterator[ServerThread]:
    """A gateway whose model `test-model` is served by `upstreams`, in that order."""
    with ExitStack() as stack:
        servers = {n: stack.enter_context(ServerThread(u.app())) for n, u in upstreams.items()}
        backends = [backend(n, s.url, **backend_extra.get(n, {})) for n, s in servers.items()]
        settings = settings_for(backends, {"test-model": list(servers)},
                                routing=routing or {})
        yield stack.enter_context(gateway_for(settings))


def chat(gw: ServerThread, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body or CHAT, headers=AUTH,
                      timeout=20)


def metric(gw: ServerThread, line_start: str) -> float:
    page = httpx.get(gw.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(line_start))


def test_ordered_by_default_sends_everything_to_the_first() -> None:
    a, b = FaultyUpstream("ok"), FaultyUpstream("ok")
    with gateway({"a": a, "b": b}) as gw:
        assert all(chat(gw).status_code == 200 for _ in range(10))
    assert (a.requests, b.requests) == (10, 0)


def test_weighted_spreads_in_proportion_to_weight() -> None:
    light, heavy = FaultyUpstream("ok"), FaultyUpstream("ok")
    with gateway({"light": light, "heavy": heavy}, {"balance": "weighted"},
                 heavy={"weight": 3}) as gw:
        assert all(chat(gw).status_code == 200 for _ in range(200))
    assert light.requests + heavy.requests == 200
    assert 0.62 <= heavy.requests / 200 <= 0.88, (light.requests, heavy.requests)


def test_least_busy_sends_more_to_the_backend_that_answers_faster() -> None:
    slow, fast = FaultyUpstream("ok", delay=1.0), FaultyUpstream("ok")
    with gateway({"slow": slow, "fast": fast}, {"balance": "least_busy"}) as gw, \
            ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: chat(gw).status_code, range(48)))
    assert statuses == [200] * 48
    assert fast.requests > 2 * slow.requests, (slow.requests, fast.requests)


def test_failures_in_a_row_eject_a_backend_for_its_cool_off() -> None:
    bad, good = FaultyUpstream("status", status=500), FaultyUpstream("ok")
    with gateway({"bad": bad, "good": good},
                 {"eject_after_failures": 2, "eject_for_s": 1.0}) as gw:
        assert [chat(gw).status_code for _ in range(6)] == [200] * 6
        assert bad.requests == 2  # then skipped while ejected
        ready = httpx.get(gw.url + "/readyz").json()
        assert ready["models"]["test-model"] == {"usable": ["good"],
                                                 "unusable": {"bad": "ejected"}}
        assert metric(gw, 'veil_backend_up{backend="bad"}') == 0
        assert metric(gw, 'veil_backend_ejections_total{backend="bad"}') == 1
        time.sleep(1.1)
        assert chat(gw).status_code == 200
        assert bad.requests == 3  # tried again after the cool-off: one failure re-ejects it
        assert chat(gw).status_code == 200
        assert bad.requests == 3
        assert metric(gw, 'veil_backend_ejections_total{backend="bad"}') == 2


def test_a_whole_reply_that_breaks_while_read_fails_over_and_counts_against_its_backend(
        ) -> None:
    cut, good = FaultyUpstream("truncated_json"), FaultyUpstream("ok")
    with gateway({"cut": cut, "good": good}, {"eject_after_failures": 1}) as gw:
        assert chat(gw).status_code == 200  # nothing had reached the client: the next one
        assert chat(gw).status_code == 200
        assert httpx.get(gw.url + "/readyz").json()["models"]["test-model"]["unusable"] == \
            {"cut": "ejected"}
    assert (cut.requests, good.requests) == (1, 2)


def test_a_stateful_request_whose_reply_breaks_is_not_sent_twice() -> None:
    cut, good = FaultyUpstream("truncated_json"), FaultyUpstream("ok")
    with gateway({"cut": cut, "good": good}) as gw:
        r = httpx.post(gw.url + "/v1/responses", headers=AUTH, timeout=20,
                       json={"model": "test-model", "input": "hi"})
    assert r.status_code == 502  # the first backend may have stored a response already
    assert (cut.requests, good.requests) == (1, 0)


def test_a_stream_the_upstream_breaks_counts_against_its_backend() -> None:
    dying, good = FaultyUpstream("die_mid_stream"), FaultyUpstream("ok")
    with gateway({"dying": dying, "good": good}, {"eject_after_failures": 1}) as gw:
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                          json={**CHAT, "stream": True}) as r:
            assert '"stream_interrupted"' in r.read().decode()
        assert chat(gw).status_code == 200
    assert (dying.requests, good.requests) == (1, 1)


def test_429_fails_over_and_the_backend_rests_for_its_retry_after() -> None:
    limited = FaultyUpstream("status", status=429, headers={"Retry-After": "1"})
    good = FaultyUpstream("ok")
    with gateway({"limited": limited, "good": good}) as gw:
        assert chat(gw).status_code == 200
        assert (limited.requests, good.requests) == (1, 1)
        assert [chat(gw).status_code for _ in range(3)] == [200] * 3
        assert limited.requests == 1  # left alone while it rests
        assert httpx.get(gw.url + "/readyz").json()["models"]["test-model"]["unusable"] == \
            {"limited": "resting"}
        time.sleep(1.1)
        assert chat(gw).status_code == 200
        assert limited.requests == 2
        # a 429 is the backend asking for rest, not a fault: it is never ejected for it
        assert metric(gw, 'veil_upstream_requests_total{backend="limited",outcome="http_429"}') \
            == 2
        assert metric(gw, 'veil_backend_up{backend="limited"}') == 1


def test_every_backend_429_is_a_429_with_retry_after_and_no_more_upstream_calls() -> None:
    a = FaultyUpstream("status", status=429, headers={"Retry-After": "7"})
    b = FaultyUpstream("status", status=429, headers={"Retry-After": "3"})
    with gateway({"a": a, "b": b}) as gw:
        first = chat(gw)
        assert first.status_code == 429
        assert first.json()["error"]["code"] == "upstream_rate_limited"
        assert first.headers["Retry-After"] == "3"
        second = chat(gw)  # every backend is resting: answered without asking them
        assert second.status_code == 429
        assert int(second.headers["Retry-After"]) in (2, 3)
    assert (a.requests, b.requests) == (1, 1)


def test_503_with_retry_after_rests_and_without_it_fails_over() -> None:
    busy = FaultyUpstream("status", status=503, headers={"Retry-After": "30"})
    with gateway({"busy": busy}) as gw:
        r = chat(gw)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "upstream_busy"
        assert "'busy', answered HTTP 503: upstream says no" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] == "30"
        assert chat(gw).status_code == 503
    assert busy.requests == 1


def test_retry_after_is_capped_by_config() -> None:
    greedy = FaultyUpstream("status", status=429, headers={"Retry-After": "86400"})
    with gateway({"greedy": greedy}, {"max_retry_after_s": 2}) as gw:
        assert chat(gw).headers["Retry-After"] == "2"


def test_retry_budget_spent_means_no_failover() -> None:
    bad, good = FaultyUpstream("status", status=500), FaultyUpstream("ok")
    with gateway({"bad": bad, "good": good},
                 {"retry_budget_ratio": 0, "retry_budget_min_per_s": 0.1}) as gw:
        assert chat(gw).status_code == 200  # the one retry the budget holds
        r = chat(gw)
        assert r.status_code == 502
        assert "retry budget is spent" in r.json()["error"]["message"]
        assert metric(gw, 'veil_upstream_retries_total{outcome="budget_exhausted"}') == 1
    assert (bad.requests, good.requests) == (2, 1)


def test_the_backends_own_words_reach_the_client_restored_and_never_the_logs(
        capsys: pytest.CaptureFixture[str]) -> None:
    picky = FaultyUpstream("echo_error", status=422)
    other = FaultyUpstream("ok")
    body = {**CHAT, "messages": [{"role": "user", "content": "write to zoe@example.org"}]}
    with gateway({"picky": picky, "other": other}) as gw:
        r = chat(gw, body)
    assert r.status_code == 422  # the request's own fault: not tried elsewhere
    assert other.requests == 0
    error = r.json()["error"]
    assert error["message"] == ("Backend 'picky' refused the request (HTTP 422): Invalid "
                                "content: 'write to zoe@example.org'")
    assert (error["code"], error["param"]) == ("invalid_value", "messages")
    assert b"zoe@example.org" not in picky.bodies[0]  # the model saw the placeholder
    written = capsys.readouterr().err
    assert "upstream_refused_request" in written
    assert "zoe@example.org" not in written
    assert "Invalid content" not in written


def test_when_every_backend_fails_the_last_ones_words_are_in_the_error() -> None:
    a, b = FaultyUpstream("status", status=500), FaultyUpstream("status", status=502)
    with gateway({"a": a, "b": b}) as gw:
        r = chat(gw)
    assert r.status_code == 502
    assert r.json()["error"]["message"] == ("No backend could serve the request; the last, "
                                            "'b', answered HTTP 502: upstream says no.")


def test_active_probe_takes_a_failing_backend_out_and_back() -> None:
    sick, good = FaultyUpstream("ok", health_status=500), FaultyUpstream("ok")
    check = {"health_check": {"path": "/health", "interval_s": 0.2, "timeout_s": 1}}
    with gateway({"sick": sick, "good": good}, sick=check) as gw:
        deadline = time.monotonic() + 5
        while sick.probes < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        assert [chat(gw).status_code for _ in range(3)] == [200] * 3
        assert (sick.requests, good.requests) == (0, 3)
        assert httpx.get(gw.url + "/readyz").json()["models"]["test-model"]["unusable"] == \
            {"sick": "probe_failed"}
        sick.health_status = 200
        time.sleep(0.5)
        assert chat(gw).status_code == 200
    assert sick.requests == 1


def test_readyz_is_503_with_detail_when_a_model_has_no_usable_backend() -> None:
    down = FaultyUpstream("status", status=500)
    with gateway({"down": down}, {"eject_after_failures": 1}) as gw:
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"upstream_sessions": True, "policies_loaded": True,
                                          "detectors_alive": True,
                                          "every_model_has_a_usable_backend": True}
        assert ready.json()["policies"][0]["name"] == "test"
        assert chat(gw).status_code == 502
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        assert ready.json()["checks"]["every_model_has_a_usable_backend"] is False
        # ejected, yet still tried when nothing else is left: better than refusing outright
        assert chat(gw).status_code == 502
    assert down.requests == 2


def test_a_malformed_field_is_the_gateways_400_and_reaches_no_backend() -> None:
    a, b = FaultyUpstream("status", status=500), FaultyUpstream("status", status=500)
    with gateway({"a": a, "b": b}) as gw:
        r = chat(gw, {**CHAT, "tools": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"
    assert (a.requests, b.requests) == (0, 0)


def test_in_flight_counts_return_to_zero_whatever_ends_a_request() -> None:
    slow, refusing = FaultyUpstream("slow", delay=1), FaultyUpstream("status", status=422)
    with gateway({"slow": slow}) as gw:
        health = gw.app[GATEWAY].pipeline.forwarder.health
        for _ in range(3):
            with pytest.raises(httpx.TimeoutException):  # the client gives up mid-request
                httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH,
                           timeout=0.3)
        assert chat(gw).status_code == 200
        deadline = time.monotonic() + 5
        while health.state("slow").in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.state("slow").in_flight == 0
    with gateway({"refusing": refusing}) as gw:
        assert [chat(gw).status_code for _ in range(3)] == [422] * 3
        assert gw.app[GATEWAY].pipeline.forwarder.health.state("refusing").in_flight == 0
