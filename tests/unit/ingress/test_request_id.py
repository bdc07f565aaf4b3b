"""Request ids the gateway makes: one shape, never repeated, not even by a forked worker."""

from __future__ import annotations

import os
import re

from aiohttp.test_utils import make_mocked_request

from gateway.ingress.middleware import request_id_for

OURS = re.compile(r"^req_[0-9a-f]{32}$")


ANONYMOUS = make_mocked_request("POST", "/v1/chat/completions")  # sends no X-Request-ID


def _new_id() -> str:
    return request_id_for(ANONYMOUS)


def test_generated_ids_have_one_shape_and_never_repeat() -> None:
    ids = [_new_id() for _ in range(10_000)]
    assert all(OURS.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same counter value as the parent, another prefix
        os.write(write, _new_id().encode())
        os._exit(0)
    os.close(write)
    ours = _new_id()
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert OURS.match(child)
    assert child[4:20] != ours[4:20]  # the per-process prefix
    assert child != ours
