"""`dltui` with no arguments, and `dltui attach` when several runs could be meant: the Runs
screen first, then the dashboard of the run picked (whose `R` key switches runs again)."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from dltui.run.reader import RunReader

from .screens.runs import RunsScreen


class BrowserApp(App[list[Path] | None]):
    """Only the Runs screen; exits with the runs picked (None: the user left)."""

    TITLE = "dltui runs"

    def __init__(self, runs_dir: Path, current: Path | None = None) -> None:
        super().__init__()
        self.runs_dir, self.current = runs_dir, current

    def on_mount(self) -> None:
        self.push_screen(RunsScreen(self.runs_dir, self.current), self.exit)


def browse(runs_dir: Path, ascii: bool = False) -> int:
    """Pick a run and watch it. Returns the exit code."""
    from .app import run_app

    picked = BrowserApp(runs_dir).run()
    if not picked:
        return 0
    with RunReader(picked[0]) as r:
        pid = r.meta().get("pid")
    return run_app(picked[0], engine_pid=pid, ascii=ascii)
