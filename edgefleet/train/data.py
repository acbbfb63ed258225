"""Each edge node's private training text, and its tokenisation into causal-LM blocks.

The demo corpus is the Python documentation shipped in the standard library
(``pydoc_data.topics``: 79 topics, ~465 k characters). It is split *by topic*: every node gets
its own topics, so the clients are non-IID, and a held-out set of topics is kept for evaluation.
Each shard is written to its node's data directory (``fleet.edge_nodes[].data_dir``, default
``<cache>/data/<node id>``) and read back from there only; any folder of ``.txt`` / ``.jsonl``
files (a ``"text"`` field per line) can stand in for it.

Example:
    >>> split = split_topics(["edge-1", "edge-2"], seed=0)
    >>> set(split.shards["edge-1"]).isdisjoint(split.shards["edge-2"]) and len(split.held_out) > 0
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config import EdgefleetConfig, EdgeNodeConfig

HELD_OUT_FRACTION = 0.15
SHARD_FILE = "shard.jsonl"


def demo_topics() -> dict[str, str]:
    """The standard library's documentation topics: name → text."""
    from pydoc_data.topics import topics

    return dict(topics)


@dataclass(frozen=True)
class TopicSplit:
    shards: dict[str, list[str]]  # node id → its topic names
    held_out: list[str]


def split_topics(
    node_ids: Sequence[str],
    *,
    topics: Sequence[str] | None = None,
    seed: int = 0,
    held_out_fraction: float = HELD_OUT_FRACTION,
) -> TopicSplit:
    """Disjoint topic sets per node (dealt round-robin after a seeded shuffle), plus held-out topics."""
    if not node_ids:
        raise ValueError("need at least one node id")
    names = sorted(topics if topics is not None else demo_topics())
    random.Random(seed).shuffle(names)
    n_held = max(1, round(held_out_fraction * len(names)))
    held, rest = names[:n_held], names[n_held:]
    if len(rest) < len(node_ids):
        raise ValueError(f"{len(rest)} topics cannot give each of {len(node_ids)} nodes its own")
    shards = {node: rest[i :: len(node_ids)] for i, node in enumerate(node_ids)}
    return TopicSplit(shards, held)


def node_data_dir(cfg: EdgefleetConfig, node: EdgeNodeConfig) -> Path:
    return node.data_dir or cfg.cache_dir / "data" / node.id


def held_out_dir(cfg: EdgefleetConfig) -> Path:
    return cfg.cache_dir / "data" / "held-out"


def write_demo_shards(cfg: EdgefleetConfig, *, seed: int = 0) -> TopicSplit:
    """Write each node's topics to its own data directory, and the held-out topics apart.

    A node with a configured ``data_dir`` that already holds text keeps its own data.
    """
    texts = demo_topics()
    split = split_topics([n.id for n in cfg.fleet.edge_nodes], topics=list(texts), seed=seed)
    for node in cfg.fleet.edge_nodes:
        folder = node_data_dir(cfg, node)
        if node.data_dir is not None and _text_files(folder):
            continue
        _write_jsonl(folder / SHARD_FILE, [{"topic": t, "text": texts[t]} for t in split.shards[node.id]])
    _write_jsonl(held_out_dir(cfg) / SHARD_FILE, [{"topic": t, "text": texts[t]} for t in split.held_out])
    return split


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _text_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())


def read_texts(folder: Path) -> list[str]:
    """Every document in ``folder``: a ``.txt`` file is one; a ``.jsonl`` line's ``"text"`` is one.

    Raises:
        FileNotFoundError: no ``.txt`` or ``.jsonl`` file in ``folder``.
        ValueError: a JSONL line is not an object with a string ``"text"`` (file and line named).
    """
    files = _text_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no .txt or .jsonl files to train on")
    out = []
    for path in files:
        if path.suffix == ".txt":
            out.append(path.read_text(encoding="utf-8"))
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f'{path}:{n}: expected an object with a string "text" field')
            out.append(row["text"])
    return out


def chunk_for_causal_lm(texts: Sequence[str], tokenizer: Any, block_size: int) -> Any:
    """Token blocks of exactly ``block_size`` (a LongTensor ``(N, block_size)``) for next-token training.

    Documents are joined with the end-of-sequence token and cut into equal blocks, so no block is
    padded: every sample's loss is a mean over the same number of tokens, which per-sample gradient
    clipping relies on. The tail shorter than a block is dropped.
    """
    import torch

    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"{len(ids)} tokens make no block of {block_size}")
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)
