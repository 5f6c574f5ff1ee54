"""Text laid out for a terminal of a given width: columns that never cut a name, words that
never break in the middle.

Rich's tables fold a cell that does not fit, in the middle of a word if need be; an operator
reading `jobs` at 80 columns then sees `comple…` and `qemu+…`. These helpers lay out the
lines themselves: the columns that name things (VMs, hosts, verdicts, states) keep their full
width, one free-text column takes what is left (cut after a whole word, or wrapped), and
when even that does not fit the free text moves under its row, or the row goes on two lines.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text

ELLIPSIS = "…"
#: Joins words a line must never break between (a VM and its state, "rolled back").
NO_BREAK = "\u00a0"
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
GAP = "  "
INDENT = "    "
#: The free-text column is moved under its row when it would be narrower than this.
MIN_FREE_WIDTH = 20


def _collapsed(text: str) -> str:
    """Runs of spaces and newlines as one space (a no-break space stays: it binds)."""
    return _SPACES.sub(" ", text).strip(" ")


def shorten(text: str, width: int) -> str:
    """`text` cut after its last whole word that fits, with an ellipsis; never mid-word
    (a first word longer than `width` is kept whole)."""
    text = _collapsed(text)
    if len(text) <= width:
        return text
    kept = ""
    for word in text.split(" "):
        candidate = f"{kept} {word}" if kept else word
        if len(candidate) + len(ELLIPSIS) > width:
            break
        kept = candidate
    if not kept:
        return text.split(" ")[0] + ELLIPSIS
    return kept.rstrip(",;:") + ELLIPSIS


def longest_word(text: str) -> int:
    """The length of the longest run `wrap` never breaks."""
    return max((len(word) for word in _collapsed(text).split(" ")), default=0)


def wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width`, broken between words only (a word longer than
    the width, such as a URI, stands alone on its line)."""
    return textwrap.wrap(
        _collapsed(text),
        max(width, 1),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [""]


@dataclass(frozen=True)
class Cell:
    text: str
    style: str = ""
    wraps: bool = False  # free text that must be read whole (who drives a running job)


def cell(value: str | Cell) -> Cell:
    return value if isinstance(value, Cell) else Cell(value)


@dataclass(frozen=True)
class Column:
    header: str
    #: dropped, lowest first, when the columns do not fit; 0: never dropped
    drop_order: int = 0
    #: when a row must go on two lines, the first line ends after this column
    line_break_after: bool = False
    right: bool = False


@dataclass
class Grid:
    """Rows of fixed columns and, last, one free-text column."""

    columns: Sequence[Column]
    free: Column | None = None
    #: the free text is cut to fit (a summary) or wrapped in full (a reason)
    free_wraps: bool = False
    #: the free text moves under its row when it would be narrower than this
    min_free: int = MIN_FREE_WIDTH
    rows: list[tuple[list[Cell], Cell]] = field(default_factory=list)

    def add(self, *cells: str | Cell, free: str | Cell = "") -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(([cell(c) for c in cells], cell(free)))

    def lines(self, width: int) -> list[Text]:
        """The grid at `width` columns: one line per row if the named columns fit (the
        least needed dropped first), else two lines per row."""
        widths = self._widths()
        everything = list(range(len(self.columns)))
        kept = self._drop_until_fits(everything, widths, width)
        if self._fixed_width(kept, widths) <= width:
            fixed = self._fixed_width(kept, widths)
            free_width = width - fixed - (len(GAP) if kept else 0)
            free_inline = self.free is not None and free_width >= self.min_free
            return self._one_line_rows(kept, widths, width, free_inline)
        return self._two_line_rows(everything, widths, width)

    def _drop_until_fits(self, kept: list[int], widths: list[int], width: int) -> list[int]:
        kept = list(kept)
        while self._fixed_width(kept, widths) + self._free_room() > width:
            droppable = [i for i in kept if self.columns[i].drop_order]
            if not droppable:
                break
            kept.remove(min(droppable, key=lambda i: self.columns[i].drop_order))
        return kept

    def _free_room(self) -> int:
        return len(GAP) + self.min_free if self.free is not None else 0

    def _widths(self) -> list[int]:
        return [
            max([len(column.header)] + [len(row[0][i].text) for row in self.rows])
            for i, column in enumerate(self.columns)
        ]

    @staticmethod
    def _fixed_width(kept: list[int], widths: list[int]) -> int:
        return sum(widths[i] for i in kept) + len(GAP) * max(len(kept) - 1, 0)

    def _line(self, cells: list[tuple[Cell, int, bool]], indent: str = "") -> Text:
        line = Text(indent)
        for n, (value, width, right) in enumerate(cells):
            if n:
                line.append(GAP)
            pad = " " * (width - len(value.text))
            if right:
                line.append(pad)
            line.append(value.text, style=value.style)
            if not right and n < len(cells) - 1:
                line.append(pad)
        line.rstrip()
        return line

    def _header(
        self, kept: list[int], widths: list[int], free_inline: bool, indent: str = ""
    ) -> Text:
        cells = [
            (Cell(self.columns[i].header, "bold"), widths[i], self.columns[i].right) for i in kept
        ]
        if free_inline and self.free is not None:
            cells.append((Cell(self.free.header, "bold"), len(self.free.header), False))
        return self._line(cells, indent)

    def _free_lines(self, free: Cell, width: int) -> list[str]:
        if not free.text:
            return []
        if self.free_wraps or free.wraps:
            return wrap(free.text, width)
        return [shorten(free.text, width)]

    def _one_line_rows(
        self, kept: list[int], widths: list[int], width: int, free_inline: bool
    ) -> list[Text]:
        lines = [self._header(kept, widths, free_inline)]
        fixed = self._fixed_width(kept, widths)
        start = fixed + len(GAP)
        for cells, free in self.rows:
            row = [(cells[i], widths[i], self.columns[i].right) for i in kept]
            lines += self._row_and_free(row, free, "", width - start, width, free_inline)
        return lines

    def _row_and_free(
        self,
        row: list[tuple[Cell, int, bool]],
        free: Cell,
        indent: str,
        room: int,
        width: int,
        free_inline: bool,
    ) -> list[Text]:
        """A row and its free text: beside it in `room` columns, or under it when a word
        of it (a long VM name) would not fit there."""
        if free_inline and longest_word(free.text) <= room:
            texts = self._free_lines(free, room)
            head = Cell(texts[0] if texts else "", free.style)
            start = " " * (width - room)
            return [
                self._line([*row, (head, len(head.text), False)], indent),
                *(Text(start + t, style=free.style) for t in texts[1:]),
            ]
        under = self._free_lines(free, width - len(INDENT))
        return [self._line(row, indent), *(Text(INDENT + t, style=free.style) for t in under)]

    def _two_line_rows(self, kept: list[int], widths: list[int], width: int) -> list[Text]:
        """Each row on two lines: the columns up to the break, then the rest indented
        (the least needed dropped if they do not fit either)."""
        breaks = [n for n, i in enumerate(kept) if self.columns[i].line_break_after]
        cut = breaks[0] + 1 if breaks else 1
        first = kept[:cut]
        second = self._drop_until_fits(kept[cut:], widths, width - len(INDENT))
        room = width - len(INDENT) - self._fixed_width(second, widths) - len(GAP)
        free_inline = self.free is not None and room >= self.min_free
        lines = [
            self._header(first, widths, free_inline=False),
            self._header(second, widths, free_inline, INDENT),
        ]
        for cells, free in self.rows:
            lines.append(self._line([(cells[i], widths[i], self.columns[i].right) for i in first]))
            row = [(cells[i], widths[i], self.columns[i].right) for i in second]
            lines += self._row_and_free(row, free, INDENT, room, width, free_inline)
        return lines


def print_lines(console: Console, lines: Sequence[Text | str]) -> None:
    """Print lines laid out already: Rich must not fold them again."""
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


def paragraph(text: str, width: int, indent: str = "", style: str = "") -> list[Text]:
    """`text` wrapped between words under `indent`."""
    return [Text(indent + line, style=style) for line in wrap(text, width - len(indent))]
