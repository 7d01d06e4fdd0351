"""A character canvas for plots: Braille dots (2x4 per cell), or plain ASCII (1x2 per cell).

Pure Python and small on purpose: a plot is a few hundred points (one per column), so drawing
it is a few thousand list writes, well under a millisecond per plot.
"""

from __future__ import annotations

from rich.text import Text

# Braille dot bits indexed [dy][dx] inside one 2x4 cell (Unicode's dot numbering).
BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
# ASCII: two dots per cell, top and bottom; both set reads as a short vertical stroke.
ASCII_CHARS = {1: "'", 2: ".", 3: ":"}


class Canvas:
    """A width x height grid of cells holding dots, each cell with the style of its last dot."""

    def __init__(self, width: int, height: int, ascii: bool = False) -> None:
        self.width, self.height, self.ascii = max(1, width), max(1, height), ascii
        self.sx, self.sy = (1, 2) if ascii else (2, 4)
        self.bits = [[0] * self.width for _ in range(self.height)]
        self.styles: list[list[str]] = [[""] * self.width for _ in range(self.height)]
        self.overlay: dict[tuple[int, int], tuple[str, str]] = {}
        self.marks: dict[tuple[int, int], tuple[str, str]] = {}
        self.cursor_col: tuple[int, str] | None = None

    @property
    def dot_width(self) -> int:
        return self.width * self.sx

    @property
    def dot_height(self) -> int:
        return self.height * self.sy

    def dot(self, x: int, y: int, style: str) -> None:
        """Set the dot at (x, y), y = 0 at the top; outside the canvas is ignored."""
        if not (0 <= x < self.dot_width and 0 <= y < self.dot_height):
            return
        col, dx = divmod(x, self.sx)
        row, dy = divmod(y, self.sy)
        self.bits[row][col] |= (1 << dy) if self.ascii else BRAILLE_BITS[dy][dx]
        self.styles[row][col] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str) -> None:
        """Bresenham's line between two dots, both ends included."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, style)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def vline(self, col: int, style: str) -> None:
        """A faint vertical rule at a cell column, only where no data dot is (event markers)."""
        if not 0 <= col < self.width:
            return
        char = "|" if self.ascii else "┊"
        for row in range(self.height):
            if not self.bits[row][col]:
                self.overlay[(row, col)] = (char, style)

    def mark(self, col: int, row: int, char: str, style: str) -> None:
        """A character drawn over the dots of one cell (a validation point's mark)."""
        if 0 <= col < self.width and 0 <= row < self.height:
            self.marks[(row, col)] = (char, style)

    def cursor(self, col: int, style: str) -> None:
        """The cursor: a column drawn in `style` (reverse video: visible without colour)."""
        if 0 <= col < self.width:
            self.cursor_col = (col, style)

    def rows(self) -> list[Text]:
        """One Text per row, consecutive cells of one style merged into one span."""
        out = []
        for r in range(self.height):
            text = Text(no_wrap=True, overflow="crop")
            run, run_style = [], ""
            for c in range(self.width):
                over = self.overlay.get((r, c))
                mark = self.marks.get((r, c))
                if mark is not None:
                    ch, st = mark
                elif over is not None and not self.bits[r][c]:
                    ch, st = over
                else:
                    b = self.bits[r][c]
                    st = self.styles[r][c]
                    if not b:
                        ch = " "
                    else:
                        ch = ASCII_CHARS[b] if self.ascii else chr(0x2800 + b)
                if self.cursor_col is not None and c == self.cursor_col[0]:
                    st = f"{st} {self.cursor_col[1]}".strip()
                    ch = ch if ch != " " else ("|" if self.ascii else "│")
                if st != run_style and run:
                    text.append("".join(run), run_style or None)
                    run = []
                run_style = st
                run.append(ch)
            if run:
                text.append("".join(run), run_style or None)
            out.append(text)
        return out
