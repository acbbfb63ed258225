"""Tables that stay readable in a narrow terminal.

A rich table with seven columns in 80 columns folds every cell into a one-word-per-line column
that nobody can read (a default terminal, or a CI log). ``show`` prints the table when each
column can have its natural width (capped, so one long cell does not force the fallback); else it
prints one record per block: the row's first cell as a heading, then ``header: value`` lines.
"""

from __future__ import annotations

from rich.console import Console
from rich.errors import MarkupError
from rich.table import Table
from rich.text import Text

# A column narrower than this folds words mid-cell; wider cells (reasons, answers) may wrap.
COMFORTABLE_COLUMN = 18
# Borders and padding: a rich table spends 3 characters per column, plus 1.
_CHROME_PER_COLUMN = 3


def _text(cell: object) -> Text:
    """A cell as rich shows it: markup parsed, or the plain string when it is not valid markup (a
    model's answer may hold ``[/b]``)."""
    if isinstance(cell, Text):
        return cell
    try:
        return Text.from_markup(str(cell))
    except MarkupError:
        return Text(str(cell))


def _plain_width(cell: object) -> int:
    return max((len(line) for line in _text(cell).plain.splitlines()), default=0)


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
        try:
            console.print(table)
            return
        except MarkupError:  # a cell that is not valid markup; the records below show it as text
            pass
    if table.title:
        console.print(Text(str(table.title), style="bold italic"))
    # Without headers (a key/value table such as `up`'s endpoints) the first cell names the row.
    headers = [str(c.header) if table.show_header else "" for c in table.columns]
    rows = list(zip(*(list(c.cells) for c in table.columns), strict=True))
    for row in rows:
        console.print(Text("• ") + Text.assemble((headers[0], "bold"), " " if headers[0] else "", _text(row[0])))
        record = Table.grid(padding=(0, 1))  # header, then the value wrapped under itself
        record.add_column(style="dim", no_wrap=True)
        record.add_column(overflow="fold")
        for header, cell in zip(headers[1:], row[1:], strict=True):
            record.add_row(f"  {header}:" if header else " ", _text(cell))
        console.print(record)
    if not rows:
        console.print("  (none)")
    console.print()
