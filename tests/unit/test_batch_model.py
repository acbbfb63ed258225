"""The engine's batching as arithmetic: the schedule the router plans with and the oracle schedules with."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.serve.batch_model import QUIET_GAP_MS, Timing, schedule

FLAT = Timing(prefill_ms_per_token=1.0, step_ms=lambda batch: 10.0, max_batch=4)


def test_an_idle_target_waits_the_quiet_gap_then_prefills_and_decodes():
    assert schedule([(100.0, 20, 5)], FLAT) == [pytest.approx(100 + QUIET_GAP_MS + 20 + 50)]


def test_requests_arriving_while_a_batch_runs_wait_for_its_end_and_then_share_one():
    done = schedule([(0.0, 10, 30), (5.0, 10, 2), (6.0, 10, 3)], FLAT)

    first_ends = QUIET_GAP_MS + 10 + 31 * 10  # one step after the longest row's last token
    assert done[0] == pytest.approx(QUIET_GAP_MS + 10 + 300)
    assert done[1:] == [pytest.approx(first_ends + 20 + 20), pytest.approx(first_ends + 20 + 30)]


def test_a_batch_never_exceeds_max_batch_and_steps_slow_down_with_its_size():
    timing = Timing(prefill_ms_per_token=0.0, step_ms=lambda batch: 10.0 * batch, max_batch=2)

    done = schedule([(0.0, 1, 1)] * 3, timing)

    assert done[:2] == [pytest.approx(QUIET_GAP_MS + 20)] * 2  # two rows: 20 ms steps
    assert done[2] == pytest.approx(QUIET_GAP_MS + 2 * 20 + 10)  # the third waits for the next batch, alone


def test_servers_run_batches_side_by_side():
    one = Timing(prefill_ms_per_token=0.0, step_ms=lambda b: 10.0, max_batch=1)
    two = Timing(prefill_ms_per_token=0.0, step_ms=lambda b: 10.0, max_batch=1, servers=2)

    assert schedule([(0.0, 1, 10)] * 2, two) == [pytest.approx(QUIET_GAP_MS + 100)] * 2
    assert schedule([(0.0, 1, 10)] * 2, one)[1] > schedule([(0.0, 1, 10)] * 2, two)[1]


@given(st.lists(st.tuples(st.floats(0, 10_000), st.integers(1, 500), st.integers(1, 300)), min_size=1, max_size=30))
def test_nobody_finishes_before_arriving_plus_their_own_work(arrivals):
    done = schedule(arrivals, FLAT)

    for (at, prompt, new), end in zip(arrivals, done, strict=True):
        assert end >= at + prompt * FLAT.prefill_ms_per_token + new * 10.0 - 1e-6
