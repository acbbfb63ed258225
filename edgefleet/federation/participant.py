"""A client's side of a federated round. It runs *on the edge node*, in the client's training session.

:func:`handle` answers the coordinator's requests (:mod:`edgefleet.federation.messages`) that come
through :class:`~edgefleet.train.jobs.LocalTrainingSession`; the base model, the node's data and this
round's secrets stay in the worker:

- :class:`PlanRequest`: the DP-SGD release (σ, q, steps) the next update would make, so the
  coordinator's ledger can refuse a client before it spends budget it does not have;
- :class:`KeysRequest` / :class:`SharesRequest`: secure aggregation's steps 1 and 2 (fresh keys each round);
- :class:`TrainRequest`: the private local update; the adapter change is flattened (B only under
  FFA-LoRA), encoded as a payload (:mod:`edgefleet.federation.payload`: weighted by the sample
  count, or clipped to C for user-level DP) and sent *masked*. The unmasked update, the sample
  count and the loss never leave the node: only their sums come out. What does leave in the
  clear is the DP release (σ, q, steps) the ledger needs, the time the update took and the node it ran on;
- :class:`RevealRequest`: secure aggregation's step 4, the shares that let the coordinator unmask only the sum.
"""

from __future__ import annotations

import time
from typing import Any

from edgefleet.federation import payload
from edgefleet.federation.messages import (
    Keys,
    KeysRequest,
    Plan,
    PlanRequest,
    Reply,
    Request,
    Revealed,
    RevealRequest,
    Shares,
    SharesRequest,
    Trained,
    TrainRequest,
)
from edgefleet.federation.secagg import SecAggClient
from edgefleet.federation.strategies import flatten
from edgefleet.train.accounting import Release
from edgefleet.train.jobs import SessionContext

SECAGG = "secagg"  # this round's secure-aggregation client, in the session's memory


def handle(base: Any, blocks: Any, request: Request, context: SessionContext) -> Reply:
    memory = context.memory
    if isinstance(request, PlanRequest):
        return _plan(blocks, request, context)
    if isinstance(request, KeysRequest):
        memory.clear()  # a new round: the previous round's secrets are gone for good
        memory[SECAGG] = SecAggClient(context.node_id, round_tag=request.tag.encode())
        return Keys(memory[SECAGG].advertise())
    if isinstance(request, SharesRequest):
        return Shares(_secagg(memory, request.tag).share_keys(request.roster, threshold=request.threshold))
    if isinstance(request, TrainRequest):
        return _train(base, blocks, request, context)
    if isinstance(request, RevealRequest):
        client = _secagg(memory, request.tag)
        shares = client.reveal(request.inbox, request.survivors, request.dropped)
        return Revealed(shares, list(client.rejected))
    raise ValueError(f"unknown request {type(request).__name__}")


def _secagg(memory: dict[str, Any], tag: str) -> SecAggClient:
    client = memory.get(SECAGG)
    if client is None or client.round_tag != tag.encode():
        raise RuntimeError(f"no secure-aggregation keys for {tag} on this node (it restarted?)")
    return client


def _plan(blocks: Any, request: PlanRequest, context: SessionContext) -> Plan:
    from edgefleet.train.accounting import noise_for
    from edgefleet.train.dp import planned_steps

    sample_rate, steps = planned_steps(len(blocks), request.hp)
    noise = noise_for(context.privacy, sample_rate, steps) if context.privacy is not None else 0.0
    return Plan(Release(noise, sample_rate, steps))


def _train(base: Any, blocks: Any, request: TrainRequest, context: SessionContext) -> Trained:
    from edgefleet.train.dp import local_update, trainable_adapter_names

    if request.delay_s:  # a simulated slow site (one-machine runs), as the WAN is simulated
        time.sleep(request.delay_s)
    started = time.perf_counter()
    update = local_update(base, request.adapter, blocks, context.privacy, request.hp)
    names = trainable_adapter_names(request.hp, update.delta)
    vector = flatten(update.delta, names)
    if request.user_clip:  # user-level DP: every client counts the same, its whole update bounded by C
        out = payload.encode_clipped(vector, clip=request.user_clip)
    else:  # FedAvg weighted by samples: the sums give the weighted mean
        out = payload.encode_weighted(vector, num_samples=update.num_samples, loss=update.loss)
    if request.secure:  # only the sums of these ever leave the mask
        out = _secagg(context.memory, request.tag).mask(out)
    return Trained(
        payload=out,
        names=names,
        release=Release(update.noise_multiplier, update.sample_rate, update.steps),
        train_s=update.seconds,
        step_s=time.perf_counter() - started,
        ran_on=_node_label(),
    )


def _node_label() -> str | None:
    """The ``edgefleet.io/node`` label of the node this runs on (None outside Ray): where the data was read."""
    try:
        import ray

        from edgefleet.platform.topology import NODE_LABEL

        return ray.get_runtime_context().get_node_labels().get(NODE_LABEL) if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - provenance is informative only
        return None
