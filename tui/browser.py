"""`dltui` with no arguments, and `dltui attach` when several runs could be meant: the Runs
screen first, then the dashboard of the run picked (whose `R` key switches runs again), or the
compare view of the runs marked (space, then c)."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from dltui.run.reader import RunReader

from .screens.runs import RunsScreen


class BrowserApp(App[list[Path] | None]):
    """Only the Runs screen; exits with the run picked, or the runs marked to compare (None:
    the user left)."""

    TITLE = "dltui runs"

    def __init__(self, runs_dir: Path, current: Path | None = None) -> None:
        super().__init__()
        self.runs_dir, self.current = runs_dir, current

    def on_mount(self) -> None:
        self.push_screen(RunsScreen(self.runs_dir, self.current, compare=True), self.exit)


def browse(runs_dir: Path, ascii: bool = False) -> int:
    """Pick a run and watch it, or several and compare them. Returns the exit code."""
    from .app import run_app

    picked = BrowserApp(runs_dir).run()
    if not picked:
        return 0
    if len(picked) > 1:
        from .screens.compare import run_compare

        return run_compare(picked, ascii=ascii)
    with RunReader(picked[0]) as r:
        pid = r.meta().get("pid")
    return run_app(picked[0], engine_pid=pid, ascii=ascii)
