"""Tables that stay readable in a narrow terminal.

A rich table with seven columns in 80 columns folds every cell into a one-word-per-line column
that nobody can read (a default terminal, or a CI log). ``show`` prints the table when each
column can have its natural width (capped, so one long cell does not force the fallback); else it
prints one record per block: the row's first cell as a heading, then ``header: value`` lines.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

# A column narrower than this folds words mid-cell; wider cells (reasons, answers) may wrap.
COMFORTABLE_COLUMN = 18
# Borders and padding: a rich table spends 3 characters per column, plus 1.
_CHROME_PER_COLUMN = 3


def _plain_width(cell: object) -> int:
    text = cell if isinstance(cell, Text) else Text.from_markup(str(cell))
    return max((len(line) for line in text.plain.splitlines()), default=0)


def fits(table: Table, width: int) -> bool:
    """Whether every column gets ``min(natural width, COMFORTABLE_COLUMN)`` within ``width``."""
    needed = 1
    for column in table.columns:
        natural = max([_plain_width(column.header), *(_plain_width(c) for c in column.cells)])
        needed += min(natural, COMFORTABLE_COLUMN) + _CHROME_PER_COLUMN
    return needed <= width


def show(console: Console, table: Table) -> None:
    """Print ``table`` as a table if it fits the console, else as one block per row."""
    if fits(table, console.width):
        console.print(table)
        return
    if table.title:
        console.print(Text(str(table.title), style="bold italic"))
    headers = [str(c.header) for c in table.columns]
    rows = list(zip(*(list(c.cells) for c in table.columns), strict=True))
    for row in rows:
        console.print(Text("• ") + Text.from_markup(f"[bold]{headers[0]}[/] {row[0]}"))
        record = Table.grid(padding=(0, 1))  # header, then the value wrapped under itself
        record.add_column(style="dim", no_wrap=True)
        record.add_column(overflow="fold")
        for header, cell in zip(headers[1:], row[1:], strict=True):
            record.add_row(f"  {header}:", cell if isinstance(cell, Text) else Text.from_markup(str(cell)))
        console.print(record)
    console.print()
