"""The agents' error policy: transient failures wait, a bad item is found by bisection, good items always pass."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stream_app.interest import (decode_state, encode_state, event_digest, has_seen, new_state,
                                 remember_events)
from stream_app.resilience import Failed, RetryPolicy, process_resilient

FAST = RetryPolicy(retries=2, split_retries=1, backoff_s=0.001, backoff_max_s=0.002)


def test_one_poison_item_is_isolated_and_the_rest_get_results():
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("13 breaks the encoder")
        return [i * 10 for i in items]

    out = asyncio.run(process_resilient(fn, list(range(64)), FAST, "test"))
    assert [r for r in out if not isinstance(r, Failed)] == [i * 10 for i in range(64) if i != 13]
    failed = [r for r in out if isinstance(r, Failed)]
    assert [(f.item, type(f.error)) for f in failed] == [(13, ValueError)]
    assert "13 breaks the encoder" in failed[0].reason
    assert len(calls) < 40  # bisection, not one call per item


def test_a_passing_retry_needs_no_split():
    attempts = []

    async def flaky(items: list[int]) -> list[int]:
        attempts.append(len(items))
        if len(attempts) < 3:
            raise RuntimeError("hiccup")
        return items

    assert asyncio.run(process_resilient(flaky, [1, 2, 3], FAST, "test")) == [1, 2, 3]
    assert attempts == [3, 3, 3]


def test_transient_failures_are_retried_until_they_pass_and_never_dead_letter():
    attempts = []

    async def outage(items: list[int]) -> list[int]:
        attempts.append(1)
        if len(attempts) < 8:  # more than `retries`: a transient error is not counted against them
            raise TimeoutError("store did not answer")
        return items

    assert asyncio.run(process_resilient(outage, [1, 2], FAST, "test")) == [1, 2]


def test_every_item_failing_alone_is_reported_each_with_its_error():
    async def broken(items: list[int]) -> list[int]:
        raise KeyError(items[0]) if len(items) == 1 else RuntimeError("batch")

    out = asyncio.run(process_resilient(broken, [1, 2, 3], FAST, "test"))
    assert [(f.item, f.error.args[0]) for f in out] == [(1, 1), (2, 2), (3, 3)]


def test_a_wrong_result_count_is_an_error_not_a_silent_misalignment():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    out = asyncio.run(process_resilient(short, [1], FAST, "test"))
    assert isinstance(out[0], Failed) and "1 items" in str(out[0].error)


def test_seen_event_ids_are_bounded_and_survive_the_codec():
    state = new_state(4)
    assert not has_seen(state, "e1")
    state = remember_events(state, [f"e{i}" for i in range(10)], cap=4)
    assert [has_seen(state, f"e{i}") for i in range(10)] == [False] * 6 + [True] * 4
    back = decode_state(encode_state(state))
    assert back.seen_events == state.seen_events and has_seen(back, "e9") and not has_seen(back, "e5")
    assert remember_events(state, ["x"], cap=0).seen_events == ()
    assert event_digest("订单-1") != event_digest("订单-2") and 0 <= event_digest("x") < 2**64


def test_a_state_without_the_seen_section_still_decodes():
    state = new_state(3)
    old = encode_state(state)  # no seen ids: exactly the layout written before the section existed
    assert decode_state(old).seen_events == ()
    with pytest.raises(ValueError, match="trailing section"):
        decode_state(old + b"XXXX\x00\x00\x00\x00")
    with pytest.raises(ValueError):
        decode_state(encode_state(remember_events(state, ["a", "b"], 8))[:-3])
    assert np.array_equal(decode_state(old).vectors, state.vectors)
