"""The hedge race on plain async generators: first decisive event wins, the loser is closed."""

import asyncio

import pytest

from edgefleet.platform.events import Delta, Finished, Started
from edgefleet.serve.events import Hedged
from edgefleet.serve.hedge_race import race
from edgefleet.serve.hedging import HedgeBudget


def rich_budget() -> HedgeBudget:
    b = HedgeBudget(share=1.0, burst=5.0)
    b.on_request()
    return b


async def side(name: str, first_token_after: float, log: list[str], tokens: int = 3, fail: bool = False):
    try:
        yield Started(0.0, 1, 1, "m", "v1", node_id=name)
        await asyncio.sleep(first_token_after)
        if fail:
            raise ConnectionError(f"{name} died")
        for i in range(tokens):
            yield Delta(f"{name}{i} ", i + 1)
        yield Finished("length", tokens, name)  # the text names the side, as node_id does in Started
    finally:
        log.append(f"{name} closed")


def collect(primary, hedge, after_s, budget):
    async def run():
        return [e async for e in race(primary, lambda: hedge, after_s=after_s, budget=budget, hedge_name="cloud")]

    return asyncio.run(run())


def test_fast_primary_is_never_hedged():
    log: list[str] = []

    events = collect(side("edge", 0.0, log), side("cloud", 0.0, log), after_s=0.2, budget=rich_budget())

    assert [type(e) for e in events] == [Started, Delta, Delta, Delta, Finished]
    assert events[-1].text == "edge" and log == ["edge closed"]  # the hedge never started


def test_slow_primary_is_hedged_and_the_faster_hedge_wins_and_the_loser_is_closed():
    log: list[str] = []
    budget = rich_budget()

    events = collect(side("edge", 1.0, log), side("cloud", 0.0, log), after_s=0.05, budget=budget)

    assert isinstance(events[0], Hedged) and "the hedge won" in events[0].text
    assert [e.node_id for e in events if isinstance(e, Started)] == ["cloud"] and events[-1].text == "cloud"
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "cloud0 cloud1 cloud2 "
    assert "edge closed" in log and budget.hedges == 1


def test_original_can_still_win_after_the_hedge_is_sent():
    log: list[str] = []

    events = collect(side("edge", 0.1, log), side("cloud", 2.0, log), after_s=0.05, budget=rich_budget())

    assert "the original won" in events[0].text and events[-1].text == "edge"
    assert "cloud closed" in log


def test_no_budget_means_no_hedge():
    log: list[str] = []

    events = collect(side("edge", 0.1, log), side("cloud", 0.0, log), after_s=0.01, budget=HedgeBudget(share=0.0))

    assert isinstance(events[0], Started) and events[-1].text == "edge" and log == ["edge closed"]


def test_a_primary_that_dies_before_its_first_token_lets_the_hedge_win():
    log: list[str] = []

    events = collect(side("edge", 0.1, log, fail=True), side("cloud", 0.2, log), after_s=0.01, budget=rich_budget())

    assert events[-1].text == "cloud"


def test_an_unhedged_failure_propagates_to_the_caller():
    with pytest.raises(ConnectionError, match="edge died"):
        collect(side("edge", 0.0, [], fail=True), side("cloud", 0.0, []), after_s=1.0, budget=rich_budget())
