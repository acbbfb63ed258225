"""A client's side of a federated round. It runs *on the edge node*, in the client's training session.

:func:`handle` serves the steps the coordinator sends through :class:`~edgefleet.train.jobs.LocalTrainingSession`
(a task with an ``"op"``); the base model, the node's data and this round's secrets stay in the worker:

- ``plan``: the DP-SGD release (σ, q, steps) the next update would make, so the coordinator's
  ledger can refuse a client before it spends budget it does not have;
- ``keys`` / ``shares``: secure aggregation's steps 1 and 2 (fresh keys each round);
- ``train``: the private local update; the adapter change is flattened (B only under FFA-LoRA),
  weighted by the client's sample count (or clipped to C for user-level DP), and sent *masked*
  with its weight and weighted loss. The unmasked update, the sample count and the loss never
  leave the node: only their sums come out. What does leave in the clear is the DP release
  (σ, q, steps) the ledger needs, the time the update took and the node it ran on;
- ``reveal``: secure aggregation's step 4, the shares that let the coordinator unmask only the sum.

Messages are plain dicts of str, numbers, bytes and numpy arrays, so they cross the session mailbox (an actor) as is.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from edgefleet.federation.secagg import AdvertisedKeys, SecAggClient
from edgefleet.federation.strategies import clip_to_norm, flatten


def handle(base: Any, blocks: Any, task: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    op = task["op"]
    memory = context["memory"]
    if op == "plan":
        return _plan(blocks, task, context)
    if op == "keys":
        memory.clear()  # a new round: the previous round's secrets are gone for good
        memory["secagg"] = SecAggClient(context["node_id"], round_tag=task["tag"].encode())
        return {"keys": asdict(memory["secagg"].advertise())}
    if op == "shares":
        roster = [AdvertisedKeys(**k) for k in task["roster"]]
        return {"outbox": _secagg(memory, task).share_keys(roster, threshold=task["threshold"])}
    if op == "train":
        return _train(base, blocks, task, context)
    if op == "reveal":
        client = _secagg(memory, task)
        shares = client.reveal(task["inbox"], task["survivors"], task["dropped"])
        return {"shares": [asdict(s) for s in shares], "rejected": client.rejected}
    raise ValueError(f"unknown op {op!r}")


def _secagg(memory: dict[str, Any], task: dict[str, Any]) -> SecAggClient:
    client = memory.get("secagg")
    if client is None or client.round_tag != task["tag"].encode():
        raise RuntimeError(f"no secure-aggregation keys for {task['tag']} on this node (it restarted?)")
    return client


def _plan(blocks: Any, task: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from edgefleet.train.dp import LocalHyper, noise_for, planned_steps

    hp = LocalHyper(**task["hp"])
    sample_rate, steps = planned_steps(len(blocks), hp)
    privacy = context["privacy"]
    noise = noise_for(privacy, sample_rate, steps) if privacy is not None else 0.0
    return {"release": {"noise_multiplier": noise, "sample_rate": sample_rate, "steps": steps}}


def _train(base: Any, blocks: Any, task: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from edgefleet.train.dp import LocalHyper, local_update, trainable_adapter_names

    if task.get("delay_s"):  # a simulated slow site (one-machine runs), as the WAN is simulated
        time.sleep(task["delay_s"])
    started = time.perf_counter()
    hp = LocalHyper(**task["hp"])
    update = local_update(base, task["adapter"], blocks, context["privacy"], hp)
    names = trainable_adapter_names(hp, update.delta)
    vector = flatten(update.delta, names)
    if task.get("user_clip"):  # user-level DP: every client counts the same, its whole update bounded by C
        vector, _ = clip_to_norm(vector, task["user_clip"])
        weight, loss = 1.0, 0.0  # no loss: its un-noised sum would sit outside the user-level guarantee
    else:  # FedAvg weighted by samples: send n·Δ and n, the sums give the weighted mean
        weight, loss = float(update.num_samples), update.loss
        vector = vector * weight
    # [n·Δ…, n, n·loss]: under secure aggregation only the sums of these ever leave the mask
    payload = np.concatenate([vector, [weight, weight * loss]])
    if task.get("secure"):
        payload = _secagg(context["memory"], task).mask(payload)
    return {
        "vector": payload,
        "names": names,
        "ran_on": _node_label(),
        "train_s": update.seconds,
        "step_s": time.perf_counter() - started,  # the whole step on the node: setup, training, masking
        "release": {
            "noise_multiplier": update.noise_multiplier,
            "sample_rate": update.sample_rate,
            "steps": update.steps,
        },
    }


def _node_label() -> str | None:
    """The ``edgefleet.io/node`` label of the node this runs on (None outside Ray): where the data was read."""
    try:
        import ray

        from edgefleet.platform.topology import NODE_LABEL

        return ray.get_runtime_context().get_node_labels().get(NODE_LABEL) if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - provenance is informative only
        return None
