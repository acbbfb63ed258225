"""What the request path hands on, typed: the hedge race's note, and the one result of a request.

A request's answer is built once, by the dispatcher, as a :class:`GenerateResult`; it maps once
to the gRPC response (:meth:`GenerateResult.to_proto`) and once to OpenAI-compatible JSON
(:mod:`edgefleet.serve.openai_http`). The engine's own events are in
:mod:`edgefleet.platform.events`: the Gateway streams their :class:`~edgefleet.platform.events.Delta`
on as they come.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet._proto import inference_pb2 as pb

_FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
_TIER = {"edge": pb.TIER_EDGE, "cloud": pb.TIER_CLOUD}


@dataclass(frozen=True)
class Hedged:
    """From the hedge race, before the winner's events: a hedge was sent to ``hedge_id``."""

    hedge_id: str
    text: str  # for the route reason: after how long, and which side won


@dataclass(frozen=True)
class GenerateResult:
    """One request's answer: the text, where it ran, how long it took, and why it went there."""

    request_id: str
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int  # every target's, across a failover
    tier: str  # "edge" or "cloud"; "" when no target started
    node_id: str
    model: str
    model_version: str
    queue_ms: float
    ttft_ms: float  # from the Gateway receiving the request
    total_ms: float
    sla_met: bool
    route_reason: str
    predicted_ms: float  # the Router's, margin included; 0 after a failover (another target's)
    network_simulated: bool
    attempts: int  # targets tried

    def to_proto(self) -> pb.GenerateResponse:
        return pb.GenerateResponse(
            request_id=self.request_id,
            text=self.text,
            usage=pb.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
            served_by=pb.ServedBy(tier=_TIER.get(self.tier, pb.TIER_UNSPECIFIED), node_id=self.node_id),
            model_name=self.model,
            model_version=self.model_version,
            timings=pb.Timings(queue_ms=self.queue_ms, ttft_ms=self.ttft_ms, total_ms=self.total_ms),
            sla_met=self.sla_met,
            finish_reason=_FINISH.get(self.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
            route_reason=self.route_reason,
            predicted_ms=self.predicted_ms,
            network_simulated=self.network_simulated,
        )
