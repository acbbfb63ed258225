"""The CLI's tables at 80 columns (a default terminal, a CI log) and on a wide screen."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from edgefleet.cli.tables import show

WHY = "edge-1 predicted 312 ms within the 2500 ms deadline at the lowest cost (edge before cloud)"


def _demo_table() -> Table:
    table = Table(title="questions through the SDK (gRPC → Serve → Gateway → node)")
    for col in ("question", "site hint", "answer", "served_by", "TTFT ms", "total ms", "why there"):
        table.add_column(col, overflow="fold")
    table.add_row(
        "What is the capital of France?", "edge-1", "The capital of France is Paris.", "edge/edge-1", "61", "402", WHY
    )
    table.add_row("Name three primary colours.", "edge-2", "Red, yellow and blue.", "[red]cloud", "75", "388", WHY)
    return table


def _render(table: Table, width: int) -> list[str]:
    out = io.StringIO()
    show(Console(file=out, width=width, color_system=None), table)
    return out.getvalue().splitlines()


def test_a_wide_table_becomes_one_block_per_row_at_80_columns():
    lines = _render(_demo_table(), 80)

    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)
    assert "• question What is the capital of France?" in text
    assert "  answer:    The capital of France is Paris." in text and "  served_by: cloud" in text  # markup applied
    first = next(i for i, line in enumerate(lines) if "why there:" in line)
    wrapped = lines[first].split("why there:")[1].strip() + " " + lines[first + 1].strip()
    assert wrapped == WHY and lines[first + 1].startswith(" " * 13)  # wrapped under itself, not word by word
    assert text.count("•") == 2 and "┃" not in text


def test_the_same_table_stays_a_table_where_it_fits():
    lines = _render(_demo_table(), 200)
    assert any("┃ question" in line for line in lines) and not any(line.startswith("•") for line in lines)


def test_a_narrow_table_stays_a_table_at_80_columns():
    table = Table(title="canary rollout")
    for col in ("group", "requests", "errors", "SLA met"):
        table.add_column(col)
    table.add_row("canary edge-1", "12", "0", "100%")
    assert any("┃ group" in line for line in _render(table, 80))


def test_a_model_answer_that_looks_like_markup_is_shown_as_it_is():
    table = _demo_table()
    table.add_row("Close the tag", "edge-1", "Write [/b] to close it.", "edge/edge-1", "1", "2", WHY)
    for width in (80, 200):
        assert "[/b]" in "\n".join(_render(table, width))


def test_a_table_without_headers_names_each_row_by_its_first_cell():
    table = Table(title="endpoints", show_header=False)
    for _ in range(3):
        table.add_column()
    table.add_row("gRPC", "127.0.0.1:9000", "edgefleet.v1.InferenceService (metadata application=edgefleet), TLS")
    table.add_row("HTTP", "http://127.0.0.1:8000/v1", "OpenAI-compatible: /chat/completions, /completions")
    lines = _render(table, 45)
    assert lines[1].startswith("• gRPC") and "127.0.0.1:9000" in lines[2] and ":" not in lines[2].split("127")[0]
