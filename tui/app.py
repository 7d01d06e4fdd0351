"""The dltui dashboard: tabs, the keys that steer the run, the store poller, make_app()/run_app()."""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.scrollbar import ScrollBar, ScrollBarRender
from textual.widgets import Input, TabbedContent, TabPane, TextArea
from textual.worker import get_current_worker

from dltui.run.client import ControlClient, ControlError, EngineGone
from dltui.run.reader import RunReader, pid_alive
from dltui.run.status import RunStatus

from .checkpoints import CheckpointServer
from .keys import app_key, help_sections, palette_commands
from .messages import CommandReplied, RunUpdated, acknowledgement
from .panes.overview import OverviewPane
from .poller import EVAL, PAUSED, STARTING, RunPoller, RunSnapshot
from .screens.dialogs import HelpScreen, LrChoice, LrDialog, QuitDialog, about_run
from .widgets.deferred import DeferredPane, focus_first
from .widgets.footer import RunFooter
from .widgets.header import RunHeader

POLL_S, POLL_ENDED_S = 0.5, 2.0  # live runs publish progress every 0.5 s; ended ones may resume
FRAME_S = 0.5  # the repaint clock: header, plots and panels change together, twice a second at most
# tab id, label, module and class of the pane (tabs 2-5 may not be installed yet)
TABS = (
    ("overview", "Overview", None, None),
    ("layers", "Layers", "layers", "LayersPane"),
    ("tensors", "Tensors", "tensors", "TensorsPane"),
    ("model", "Model", "model", "ModelPane"),
    ("console", "Console", "console", "ConsolePane"),
    ("metrics", "Metrics", "metrics", "MetricsPane"),
)
# The steering actions and the control each needs (meta['steering'], wire.STEERING_KEYS).
STEERING = {
    "pause_resume": "pause",
    "step": "step",
    "set_lr": "lr",
    "scale_lr": "lr",
    "toggle_mode": "eval",
    "checkpoint": "checkpoint",
}
# The app's own keys: they act from any tab, but never under a dialog or while typing.
GLOBAL_ACTIONS = {*STEERING, "request_quit", "help", "show_tab", "switch_run"}


class AsciiScrollBarRender(ScrollBarRender):
    """Scrollbar thumbs without the partial-block glyphs (for --ascii)."""

    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


class DltuiApp(App[int]):
    """Watches one run through its store and steers it through its control socket."""

    CSS_PATH = "dltui.tcss"
    TITLE = "dltui"
    HORIZONTAL_BREAKPOINTS = [(0, "-w-tiny"), (60, "-w-narrow"), (100, "-w-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-h-tiny"), (20, "-h-short"), (34, "-h-tall")]
    # Run keys are priority bindings: they work on every tab, before a focused tree or table sees
    # them (a Tree takes space to fold a node). check_action() lets them through to a text box
    # while one has focus, and hides them under dialogs and, for steering, on read-only runs.
    BINDINGS = [
        app_key("space", "pause_resume('pause')", "Pause", "Pause the run", "run.pause"),
        app_key("space", "pause_resume('resume')", "Resume", "Resume the paused run", "run.resume"),
        app_key("n", "step", "Step", "One optimizer step while paused", "run.step"),
        app_key("l", "set_lr", "LR", "Set the learning rate (0.01, *0.5, /2)", "run.lr"),
        app_key(
            "plus,equals_sign",
            "scale_lr('*2')",
            "LR*2",
            "Double the LR (every optimizer)",
            "run.lr_double",
            key_display="+",
        ),
        app_key(
            "minus",
            "scale_lr('/2')",
            "LR/2",
            "Halve the LR (every optimizer)",
            "run.lr_halve",
            key_display="-",
        ),
        app_key("e", "toggle_mode", "Eval", "Switch between train and eval", "run.mode"),
        app_key("c", "checkpoint", "Ckpt", "Save a checkpoint now", "run.checkpoint"),
        app_key("q", "request_quit", "Quit", "Stop the run, detach, or cancel", "app.quit"),
        app_key("R", "switch_run", "Runs", "All runs in the runs dir: open another", "app.runs"),
        app_key(
            "question_mark",
            "help",
            "Help",
            "Every key, the mouse, and what the states mean",
            "app.help",
            key_display="?",
        ),
        *(
            app_key(str(i), f"show_tab('{tab}')", label, f"Show the {label} tab", f"tab.{tab}")
            for i, (tab, label, _, _) in enumerate(TABS, 1)
        ),
    ]

    def __init__(
        self,
        run_dir: Path,
        *,
        engine_pid: int | None = None,
        ascii: bool = False,
        owns_engine: bool = False,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.engine_pid = engine_pid
        self.ascii = self.ascii_mode = ascii  # panes read app.ascii_mode
        self.owns_engine = owns_engine
        self.client = ControlClient(self.run_dir, timeout=90.0)
        # A finished run's Tensors and Model tabs read a checkpoint through this (started lazily)
        self.checkpoints = CheckpointServer(self.run_dir)
        self.snapshot: RunSnapshot | None = None
        self.quit_choice: str | None = None  # 'stop' or 'detach' once the user quit a live run
        self._reply_state: dict = {}  # the engine's state: its newest reply, or what we just asked
        self._reply_at = 0.0
        self._outbox: queue.Queue = queue.Queue()  # requests, sent one at a time, in key order
        if ascii:
            self.add_class("-ascii")
        # Kept, not queried: a query runs on the active screen, which may be a dialog.
        self.header = RunHeader(self.run_dir.name, ascii=ascii, id="header")
        self.overview = OverviewPane(self.run_dir, self.client, ascii=ascii, classes="pane")

    # -- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield self.header
        with TabbedContent(id="tabs"):
            for i, (tab, label, module, cls_name) in enumerate(TABS, 1):
                with TabPane(f"{i} {label}", id=tab):
                    if module is None:
                        yield self.overview
                    else:
                        yield DeferredPane(module, cls_name, label, self.run_dir, self.client)
        yield RunFooter(compact=True)

    def on_mount(self) -> None:
        if self.ascii:  # a class attribute: Textual has no per-app setting; put back on unmount
            self._scrollbar_renderer, ScrollBar.renderer = ScrollBar.renderer, AsciiScrollBarRender
        self._poll()
        self._sender()
        self.set_interval(FRAME_S, self._frame)
        self._focus_overview()

    def _focus_overview(self) -> None:
        """Its plot keys (s, g, x, m) work at once. Focused in on_mount, not after a refresh:
        a focus moves TabbedContent to the focused widget's tab, and one handled after an early
        tab key (2-5 pressed as the app opens) took the user back to the Overview."""
        if self.header.screen.query_one(TabbedContent).active in ("", "overview"):
            self.overview.focus()

    def on_unmount(self) -> None:
        if self.ascii:
            ScrollBar.renderer = self._scrollbar_renderer
        self.client.close()
        self.checkpoints.stop()  # no server outlives the dashboard

    def _panes(self) -> Iterable:
        return self.header.screen.query(".pane") if self.header.is_attached else ()

    def action_show_tab(self, tab: str) -> None:
        self.header.screen.query_one(TabbedContent).active = tab
        self._focus_pane(tab)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._focus_pane(event.pane.id or "")

    def _focus_pane(self, tab: str) -> None:
        # query, not query_one: at start-up TabbedContent may not have mounted its panes yet;
        # a TabActivated may also arrive while the app comes up or is torn down, with no screen
        # (seen once in the suite: NoScreen from this handler failed the app)
        if not self.header.is_attached:
            return
        for pane in self.header.screen.query(f"TabPane#{tab}"):
            focus_first(pane)

    # -- the poller ----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="poller", name="store poller")
    def _poll(self) -> None:
        """Read the store a few times a second on a thread; post a snapshot when it changed."""
        worker = get_current_worker()
        poller = RunPoller(self.run_dir, self.engine_pid)
        try:
            while not worker.is_cancelled:
                try:
                    snap = poller.poll()
                except Exception as e:  # locked past busy_timeout, half-written: reopen, go on
                    self.log.warning(f"store read failed: {type(e).__name__}: {e}")
                    poller.close()  # the dashboard keeps what it has rather than dying
                    snap = None
                if snap is not None:
                    self.post_message(RunUpdated(snap))
                live = self.snapshot is None or self.snapshot.live
                deadline = time.monotonic() + (POLL_S if live else POLL_ENDED_S)
                while not worker.is_cancelled and time.monotonic() < deadline:
                    time.sleep(0.05)  # short naps: quitting never waits for a poll interval
        finally:
            poller.close()

    def _frame(self) -> None:
        """One clock for every repaint, so a changed run costs one screen update, not several."""
        if self.header.is_attached:
            self.header.tick()
            for pane in self._panes():  # each fetches only if its data moved (pane.data_key)
                if pane.display and hasattr(pane, "frame"):
                    pane.frame(self.snapshot)

    def on_run_updated(self, message: RunUpdated) -> None:
        snap, old = message.snapshot, self.snapshot
        self.snapshot = snap
        if old is None or (old.state, old.meta.get("steering")) != (
            snap.state,
            snap.meta.get("steering"),
        ):
            # the footer follows the run: Resume while paused, no steering keys once read-only,
            # dimmed what this run can't do (e without on_eval)
            self.refresh_bindings()
        self.header.show(snap)
        if old is None:
            self._frame()  # first paint: don't wait for the clock
        if old is not None and old.live and not snap.live:
            detail = f": {snap.detail}" if snap.detail else ""
            hint = f"\n{self.header.hint}" if self.header.hint else ""  # --resume, when it can
            self.notify(
                f"run {snap.state.label}{detail}{hint}",
                severity="warning" if snap.state is not RunStatus.FINISHED else "information",
                timeout=12 if hint else 8,
                markup=False,
            )

    # -- steering ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in GLOBAL_ACTIONS and (isinstance(self.screen, ModalScreen) or self.typing()):
            # Keys under a dialog do nothing ('c' in the quit dialog must not take a checkpoint),
            # and a focused text box gets the letters typed into it.
            return False
        if action in GLOBAL_ACTIONS and action != "request_quit" and not self.on_dashboard():
            return False  # another screen (the Runs browser) has its own space, c, s...
        if action in STEERING:
            snap = self.snapshot
            if snap is not None and not snap.live:
                return False  # read-only: not offered; pressed anyway, on_key says why
            if action == "pause_resume" and parameters:
                # one of the two space bindings at a time: the footer says Resume while paused
                return (parameters[0] == "resume") == bool(self._engine_flag("paused"))
            if self.unsupported(action):
                return None  # shown dimmed; on_key says why when it is pressed anyway
        return True

    def on_dashboard(self) -> bool:
        """The dashboard's own screen is the active one (not the Runs browser over it)."""
        return not self.header.is_attached or self.screen is self.header.screen

    def typing(self) -> bool:
        """A text box has focus: printable keys are its text, not commands."""
        return isinstance(self.screen.focused, (Input, TextArea))

    def unsupported(self, action: str) -> str | None:
        """The control an action needs when this run lacks it (eval on a script without on_eval)."""
        need = STEERING.get(action)
        snap = self.snapshot
        return need if need and snap is not None and not snap.supports(need) else None

    def on_key(self, event: events.Key) -> None:
        """A steering key the run can't take (read-only run, or a control it lacks) was pressed:
        say why it does nothing, and keep it from the focused widget (a tree would fold)."""
        if isinstance(self.screen, ModalScreen) or self.typing() or not self.on_dashboard():
            return
        for b in self.BINDINGS:
            if isinstance(b, Binding) and event.key in b.key.split(","):
                action = b.action.split("(")[0]
                if action not in STEERING:
                    return
                event.stop()
                event.prevent_default()
                if self.steerable():
                    self.explain_unsupported(action)
                return

    def explain_unsupported(self, action: str) -> None:
        need = self.unsupported(action)
        if need is None:
            return
        if need == "eval":
            # Asked anyway: the engine's refusal says why and how to add it (its wording has one
            # home), and a script that called dltui.on_eval since the last poll just runs it.
            self._outbox.put(("mode", {"mode": "eval"}, None))
            return
        kind = "script" if self.snapshot and self.snapshot.is_script else "run"
        self.notify(
            f"{need}: this {kind}'s engine does not offer it",
            severity="warning",
            timeout=6,
            markup=False,
        )

    def steerable(self) -> bool:
        snap = self.snapshot
        if snap is not None and not snap.live:
            why = " (the engine is gone)" if snap.state is RunStatus.CRASHED else ""
            self.notify(f"run {snap.state.lower()}: read-only{why}", severity="warning", timeout=4)
            return False
        return True

    def _engine_flag(self, key: str) -> object:
        """paused / mode as the engine last said: a reply is newer than the last poll."""
        if key in self._reply_state and time.monotonic() - self._reply_at < 2.0:
            return self._reply_state[key]
        state = self.snapshot.state if self.snapshot else None
        if key == "paused":
            return state == PAUSED
        return "eval" if state == EVAL else "train"

    def action_pause_resume(self, _shown: str = "") -> None:
        """Space: pause or resume, whichever the engine's newest word makes it (the footer shows
        the same choice, `_shown`)."""
        if self.steerable():
            self._send("resume" if self._engine_flag("paused") else "pause")

    def action_step(self) -> None:
        if self.steerable():
            self._send("step", n=1)

    def action_set_lr(self) -> None:
        if self.steerable():

            def chosen(choice: LrChoice | None) -> None:
                if choice is not None:
                    args = {"optimizer": choice.optimizer, "group": choice.group}
                    self._send(
                        "lr", value=choice.value, **{k: v for k, v in args.items() if v is not None}
                    )

            self.push_screen(LrDialog(self._optimizer_lrs(), self._group_counts()), chosen)

    def _optimizer_lrs(self) -> list[float] | dict[str, list[float]]:
        """Each optimizer's LRs, the run's own first: from the engine's newest reply when it is
        fresher than the last poll (an LR just changed), else from the store."""
        snap = self.snapshot
        if snap is None:
            return []
        lrs = dict(snap.optimizer_lrs)
        if len(lrs) < 2:
            return snap.lrs
        replied = self._reply_state.get("optimizers")
        if isinstance(replied, dict) and time.monotonic() - self._reply_at < 2.0:
            lrs.update({k: v for k, v in replied.items() if k in lrs and isinstance(v, list)})
        return lrs

    def _group_counts(self) -> dict[str, int]:
        snap = self.snapshot
        return {o["name"]: int(o.get("groups") or 0) for o in snap.optimizers} if snap else {}

    def action_scale_lr(self, value: str) -> None:
        """+ and -: every optimizer of the run by the same factor (a GAN's two keep their ratio)."""
        if self.steerable():
            names = [o["name"] for o in self.snapshot.optimizers] if self.snapshot else []
            for name in names if len(names) > 1 else [None]:
                self._send("lr", value=value, **({"optimizer": name} if name else {}))

    def action_toggle_mode(self) -> None:
        if not self.steerable():
            return
        if self.snapshot is not None and self.snapshot.is_script:  # one pass, then it trains on
            self._send("mode", mode="eval")
            return
        self._send("mode", mode="train" if self._engine_flag("mode") == "eval" else "eval")

    def action_checkpoint(self) -> None:
        if self.steerable():
            self._send("checkpoint")

    def _send(self, cmd: str, then: str | None = None, **args: object) -> None:
        if cmd in ("checkpoint", "mode"):  # these wait for a step boundary (up to a step)
            what = (
                "eval pass" if cmd == "mode" and self.snapshot and self.snapshot.is_script else cmd
            )
            self.notify(f"{what} requested...", timeout=1.5)
        if cmd in ("pause", "resume", "mode"):  # what the next space / e toggles from, before
            expect = {"paused": cmd == "pause"} if cmd != "mode" else {"mode": args["mode"]}
            self._reply_state = {**self._reply_state, **expect}  # the reply confirms it
            self._reply_at = time.monotonic()
            self.refresh_bindings()  # Pause <-> Resume in the footer at once
        self._outbox.put((cmd, args, then))

    @work(thread=True, exclusive=True, group="control", name="control sender")
    def _sender(self) -> None:
        """Send queued requests one at a time on a thread, in the order the keys were pressed.

        The engine answers at its next step boundary (up to a step); the UI never waits for it,
        and a pause then a resume can never overtake each other.
        """
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                cmd, args, then = self._outbox.get(timeout=0.1)
            except queue.Empty:
                continue
            self.post_message(self._request(cmd, args, then))

    def _request(self, cmd: str, args: dict, then: str | None) -> CommandReplied:
        try:
            reply = self.client.request(cmd, **args)
        except Exception as e:  # ControlError speaks to the user; anything else is still said
            e = e if isinstance(e, ControlError) else ControlError(f"{type(e).__name__}: {e}")
            if cmd == "stop" and isinstance(e, EngineGone) and self._signal_engine():
                text = "engine not listening yet: sent it SIGTERM (checkpoint, then exit)"
                return CommandReplied(cmd, True, text, then=then)
            return CommandReplied(cmd, False, str(e), then=then)
        script = self.snapshot is not None and self.snapshot.is_script
        text = acknowledgement(cmd, reply.ok, reply.error, reply.state, reply.data, script=script)
        return CommandReplied(cmd, reply.ok, text, reply.state, reply.data, then)

    def _signal_engine(self) -> bool:
        """Stop an engine we started that has no socket yet (still loading the recipe)."""
        if not (self.owns_engine and self.engine_pid and pid_alive(self.engine_pid)):
            return False
        os.kill(self.engine_pid, signal.SIGTERM)
        return True

    def on_command_replied(self, message: CommandReplied) -> None:
        if message.state:
            self._reply_state, self._reply_at = message.state, time.monotonic()
            self.refresh_bindings()
        # markup off: the engine's words may hold brackets (`x[1:3]`, {'loss': 0.3})
        self.notify(
            message.message,
            severity="information" if message.ok else "error",
            timeout=3 if message.ok else min(12, 6 + len(message.message) // 40),
            markup=False,
        )
        if message.then == "exit":
            self.exit(0)

    # -- quit and help -------------------------------------------------------------------------
    def action_request_quit(self) -> None:
        snap = self.snapshot
        if snap is None or not snap.live or (snap.state == STARTING and not self.owns_engine):
            self.exit(0)
            return

        def chosen(choice: str | None) -> None:
            if choice == "stop":
                self.quit_choice = "stop"
                self._send("stop", then="exit")
            elif choice == "detach":
                self.quit_choice = "detach"
                self.exit(0)

        self.push_screen(QuitDialog(self.run_dir.name, self.owns_engine), chosen)

    async def action_quit(self) -> None:
        """ctrl+q and the palette's Quit ask like q does: one way out, never a silent stop."""
        if not isinstance(self.screen, QuitDialog):
            self.action_request_quit()

    def action_switch_run(self) -> None:
        """The Runs screen. Picking another run leaves this dashboard for that run's; a run this
        dashboard started keeps training, as after detach (run_app opens the next one)."""
        from .screens.runs import RunsScreen

        def picked(paths: list[Path] | None) -> None:
            if paths and len(paths) > 1:  # marked to compare: over this dashboard, Esc returns
                from .screens.compare import CompareScreen

                self.push_screen(CompareScreen(paths, ascii=self.ascii))
            elif paths and Path(paths[0]).resolve() != self.run_dir.resolve():
                self.quit_choice = "detach" if self.snapshot and self.snapshot.live else None
                self.exit(result=Path(paths[0]))

        self.push_screen(RunsScreen(self.run_dir.parent, self.run_dir, compare=True), picked)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(help_sections(self, TABS, about_run(self.snapshot))))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette (ctrl+p) offers every key's action; Textual's own Quit is left out: q's
        (stop, detach or cancel) is the one way out."""
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command
        yield from palette_commands(self, TABS)


def make_app(
    run_dir: Path, *, engine_pid: int | None = None, ascii: bool = False, owns_engine: bool = False
) -> DltuiApp:
    """The dashboard for one run directory (shared by the CLI and the tests)."""
    return DltuiApp(Path(run_dir), engine_pid=engine_pid, ascii=ascii, owns_engine=owns_engine)


def run_app(
    run_dir: Path, *, engine_pid: int | None = None, ascii: bool = False, owns_engine: bool = False
) -> int:
    """Run the dashboard until the user quits; returns the process exit code. Switching runs
    (R) opens the next run's dashboard here, in the same terminal."""
    while True:
        app = make_app(run_dir, engine_pid=engine_pid, ascii=ascii, owns_engine=owns_engine)
        app.run()
        if not isinstance(app.return_value, Path):
            return app.return_code or 0
        run_dir, owns_engine = app.return_value, False
        with RunReader(run_dir) as r:
            engine_pid = r.meta().get("pid")
