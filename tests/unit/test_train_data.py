"""Client data: the non-IID topic split, the shards on disk, reading any folder, causal-LM blocks."""

import json

import pytest

from edgefleet.config import parse_config
from edgefleet.platform.models import build_tiny_tokenizer
from edgefleet.train.data import (
    chunk_for_causal_lm,
    demo_topics,
    held_out_dir,
    node_data_dir,
    read_texts,
    split_topics,
    write_demo_shards,
)
from tests.conftest import make_test_config_dict


def test_topics_are_split_disjointly_by_node_with_a_held_out_set():
    names = list(demo_topics())
    split = split_topics(["edge-1", "edge-2", "edge-3"], topics=names, seed=1)

    shards = [set(v) for v in split.shards.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])
    assert set(split.held_out).isdisjoint(set().union(*shards))
    assert set(split.held_out) | set().union(*shards) == set(names)  # every topic used once
    assert split_topics(["edge-1", "edge-2", "edge-3"], topics=names, seed=1) == split  # seeded


def test_too_few_topics_for_the_nodes_is_refused():
    with pytest.raises(ValueError, match="cannot give each"):
        split_topics(["a", "b", "c"], topics=["x", "y", "z"])


def test_each_node_shard_lands_in_its_own_directory(tmp_path):
    data = make_test_config_dict(num_edge=2) | {"cache_dir": str(tmp_path)}
    cfg = parse_config(data)

    split = write_demo_shards(cfg)

    for node in cfg.fleet.edge_nodes:
        rows = [json.loads(line) for line in (node_data_dir(cfg, node) / "shard.jsonl").read_text().splitlines()]
        assert [r["topic"] for r in rows] == split.shards[node.id]
    assert len(read_texts(held_out_dir(cfg))) == len(split.held_out)


def test_any_folder_of_text_and_jsonl_is_read(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')

    assert read_texts(tmp_path) == ["plain text", "one", "two"]


@pytest.mark.parametrize(("line", "message"), [("not json", "not JSON"), ('{"body": "x"}', 'string "text"')])
def test_a_bad_jsonl_line_is_named(tmp_path, line, message):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n' + line + "\n")

    with pytest.raises(ValueError, match=rf"d\.jsonl:2: .*{message}"):
        read_texts(tmp_path)


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .txt or .jsonl"):
        read_texts(tmp_path)


def test_blocks_are_equal_length_and_cover_the_text_in_order():
    tok = build_tiny_tokenizer()

    blocks = chunk_for_causal_lm(["hello world", "second doc"], tok, block_size=8)

    flat = blocks.flatten().tolist()
    assert blocks.shape == (len(flat) // 8, 8)
    expected = tok("hello world")["input_ids"] + [tok.eos_token_id] + tok("second doc")["input_ids"]
    assert flat == expected[: len(flat)]
