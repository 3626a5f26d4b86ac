"""The only module that talks to tmux.

agentflow runs its own tmux server on its own socket (not in ``/tmp``, where a step's
``rm -rf /tmp/*`` would kill it): one session per run, one window per step. A run's
commands go through one control-mode client (``tmux_control``) that stays attached to its
session; without one (before the session exists, or if it fails), raw tmux commands
through libtmux's ``Server.cmd``, several per invocation where possible, since each tmux
client process costs a few milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import libtmux

from agentflow.errors import EnvironmentProblem
from agentflow.settings import settings
from agentflow.tmux_control import (
    ControlClient,
    ControlError,
    ProcessWaiter,
    Reply,
)

_MAX_SOCKET_PATH = 100
HISTORY_LIMIT = 50000
COMMAND_MAX = 16300
"""The most bytes of a window's tmux command (its arguments, NUL-ended): tmux's client
sends a command in one message of at most 16 KiB, its header included."""
SERVER_ENV = ("HOME", "PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "XDG_CONFIG_HOME")
"""All the tmux server gets of the environment of the process that starts it: what tmux
and the user's tmux.conf need. The server's environment is the base of every window's, and
the server outlives the run that started it: nothing of a run (a secret, the workflow's
variables) may be in it."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REPORTED_TITLE = "agentflow-reported"
"""The title a step's wrapper gives its window once it has written the exit code and woken
the runner (``wrapper.sh``): the window's end needs no wake-up of its own."""
SERVER_TRIES = 3
"""Tries of a command that may start the server, when the server exits under it."""


def server_env() -> dict[str, str]:
    """The environment the tmux server is started with (``SERVER_ENV`` of this process's)."""
    return {k: os.environ[k] for k in SERVER_ENV if k in os.environ}


def tmux_binary() -> str:
    path = shutil.which("tmux")
    if path is None:
        raise EnvironmentProblem(
            "tmux is not installed: install it (Debian/Ubuntu: `sudo apt-get install tmux`, "
            "macOS: `brew install tmux`)"
        )
    return path


def socket_path_for(home: Path) -> Path:
    """The tmux socket for an agentflow home, one per home, in a private folder of this
    user's (``$XDG_RUNTIME_DIR/agentflow`` or ``~/.cache/agentflow``): never in ``/tmp``,
    where a step's ``rm -rf /tmp/*`` would kill it, and never under the home, which may lie
    inside a workspace that a sandbox sees (a step that reaches the socket could run
    commands on the host). The name is short: socket paths are limited to ~100 bytes."""
    override = settings().tmux_socket
    if override:
        return override
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path.home() / ".cache"
    folder = base / "agentflow"
    if len(str(folder)) > _MAX_SOCKET_PATH - 30:
        folder = Path(f"/run/user/{os.getuid()}/agentflow")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"{digest}.sock"


def wake_channel(session: str) -> str:
    """The tmux channel signalled when a window of ``session`` ends."""
    return f"agentflow-{session}"


@dataclass(frozen=True)
class Pane:
    """What tmux knows of a step's window."""

    window_id: str
    name: str
    dead: bool
    dead_status: int | None


class Tmux:
    """agentflow's tmux server."""

    def __init__(self, socket_path: Path) -> None:
        self.binary = tmux_binary()
        self.socket_path = socket_path
        self.server = libtmux.Server(socket_path=str(socket_path))
        self.control: ControlClient | None = None
        """The run's control-mode client, once ``open_control`` made one."""

    def open_control(self, session: str) -> bool:
        """Send this process's later commands through a control client attached to
        ``session`` (which exists); False when none could attach (commands go on as tmux
        processes)."""
        self.close_control()
        if not _control_mode():
            return False
        try:
            self.control = ControlClient(self.binary, str(self.socket_path), session, server_env())
        except (ControlError, OSError):
            return False
        return True

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    def _run(self, *args: str) -> tuple[bool, list[str], str]:
        """One tmux command: whether it succeeded, its output lines, its error."""
        if self.control is not None:
            try:
                ok, lines = self.control.run(list(args))
            except ControlError:
                self.close_control()  # from now on, a process per command
            else:
                return ok, ([] if not ok else lines), (" ".join(lines) if not ok else "")
        result = self.server.cmd(*args)
        return result.returncode == 0, list(result.stdout), " ".join(result.stderr)

    def _cmd(self, *args: str, check: bool = True) -> list[str]:
        ok, out, err = self._run(*args)
        if check and not ok:
            raise EnvironmentProblem(f"tmux {args[0]} failed: {err}")
        return out

    def has_session(self, session: str) -> bool:
        return self.server.cmd("has-session", "-t", f"={session}").returncode == 0

    def ensure_session(self, session: str, cwd: Path, command: str) -> None:
        """Create the run's session (its first window runs ``command``) unless it exists.

        ``remain-on-exit`` and ``history-limit`` are set on the server before any step's
        window exists: a window whose command exits at once would otherwise vanish before
        anyone looks at it. A ``pane-died`` hook signals the session's wake channel
        (``wake_channel``) when a window's process ends without its wrapper having said
        that it reported the end (``REPORTED_TITLE``).

        The server is started here, if it is not running, with ``server_env`` only; what
        a server started otherwise holds in its global environment is removed."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.has_session(session):
            return
        if _tmux_version() >= (3, 3):
            # A tmux command, run by the server itself: no shell, no client process; and
            # none at all for a window whose wrapper said it reported its end (its title):
            # the wake FIFO told the runner already, and a late wake-up would only make it
            # look at every window again while the next step runs.
            signal = f'run-shell -C \\"wait-for -S {wake_channel("#{session_name}")}\\"'
            hook = f'if-shell -F "#{{!=:#{{pane_title}},{REPORTED_TITLE}}}" "{signal}"'
        else:  # tmux before 3.3: through a shell and a client
            signal = shlex.join(
                [self.binary, "-S", str(self.socket_path), "wait-for", "-S",
                 wake_channel("#{session_name}")]
            )  # fmt: skip
            hook = f'run-shell -b "{signal}"'
        shown = self._server_cmd(
            # -E: the session's environment takes nothing from this client's.
            "new-session", "-d", "-E", "-s", session, "-n", "agentflow", "-x", "200",
            "-y", "50", "-c", str(cwd), command,
            ";", "set-option", "-g", "remain-on-exit", "on",
            ";", "set-option", "-g", "history-limit", str(HISTORY_LIMIT),
            ";", "set-option", "-g", "exit-empty", "off",
            # Windows start their command with a plain sh, whatever the user's shell: no
            # BASH_ENV or shell start-up file of the host runs before a step.
            ";", "set-option", "-g", "default-shell", "/bin/sh",
            # Nor does a client that attaches (`agentflow attach`) hand its DISPLAY,
            # SSH_AUTH_SOCK, ... to the session's later windows.
            ";", "set-option", "-g", "update-environment", "",
            # A step's OSC 52 or passthrough sequences reach no clipboard or terminal of a
            # person attached, whatever their tmux.conf says.
            ";", "set-option", "-g", "set-clipboard", "off",
            ";", "set-option", "-g", "allow-passthrough", "off",
            ";", "set-hook", "-g", "pane-died", hook,
            ";", "show-environment", "-g",
        )  # fmt: skip
        self._scrub_global_env(shown)

    def _server_cmd(self, *args: str) -> list[str]:
        """A tmux command that may start the server, from a client whose environment is
        ``server_env``: the server takes its environment from the client that starts it
        (libtmux's would be this process's, secrets and all), and keeps it for its life."""
        for _ in range(SERVER_TRIES):
            done = subprocess.run(
                [self.binary, "-S", str(self.socket_path), *args],
                env=server_env(),
                cwd="/",  # the server's PWD: tmux sets each window's own
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            # A server that went away while this client reached it (killed, or one that
            # another orchestrator was starting on the same socket): a new one is started.
            if done.returncode == 0 or "server exited unexpectedly" not in done.stderr:
                break
            time.sleep(0.2)
        if done.returncode != 0:
            raise EnvironmentProblem(f"tmux {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.splitlines()

    def _scrub_global_env(self, shown: list[str]) -> None:
        """Remove from the server's global environment (``show-environment -g``) what is
        not ``SERVER_ENV``: left by a server started outside ``ensure_session`` (an older
        agentflow, a tmux.conf), it would reach every later window of every run."""
        stray = {line.split("=", 1)[0] for line in shown if "=" in line}
        stray -= {*SERVER_ENV, "PWD"}
        unset: list[str] = []
        for name in sorted(n for n in stray if _NAME.fullmatch(n)):
            unset += [*([";"] if unset else []), "set-environment", "-g", "-u", name]
        if unset:
            self._cmd(*unset)

    @staticmethod
    def window_args(session: str, name: str, argv: list[str], cwd: Path) -> list[str]:
        """The tmux command that starts ``argv`` in a new background window: run as it is
        (more than one word: no shell before it), with the server's fixed environment
        (never ``-e``: values on a command line are everybody's to read in ``ps``)."""
        args = ["new-window", "-d", "-P", "-F", "#{window_id}", "-t", f"={session}:"]
        return [*args, "-n", name, "-c", str(cwd), *argv]

    @staticmethod
    def command_size(args: list[str]) -> int:
        """The bytes ``args`` take in the message tmux's client sends its server (which
        refuses one over ``COMMAND_MAX``)."""
        return sum(len(a.encode()) + 1 for a in args)

    def new_window(self, session: str, name: str, argv: list[str], cwd: Path) -> str:
        """Start ``argv`` in a new background window; returns its window id (``@N``)."""
        out = self._cmd(*self.window_args(session, name, argv, cwd))
        return out[0].strip()

    def begin_window(self, session: str, name: str, argv: list[str], cwd: Path) -> int | None:
        """``new_window`` without waiting for tmux to make it (the server makes windows one
        at a time, a few milliseconds each, while the caller does its own work): a ticket
        for ``window_begun``; None when there is no control client (use ``new_window``)."""
        if self.control is None:
            return None
        try:
            return self.control.send(self.window_args(session, name, argv, cwd))
        except ControlError:
            self.close_control()
            return None

    def window_begun(self, ticket: int, wait: bool) -> str | None:
        """The window id that ``begin_window``'s ticket made; None when tmux has not
        answered yet (``wait``: waited for). Raises ``EnvironmentProblem`` when tmux
        refused, and ``ControlError`` when the client went (whether the window was made
        is then unknown: look for it by its name)."""
        if self.control is None:
            raise ControlError("tmux control client is gone")
        try:
            if wait:
                reply: Reply | None = self.control.wait(ticket)
            else:  # (read only when not in already: one read brings all that came)
                reply = self.control.take(ticket)
                if reply is None:
                    self.control.poll()
                    reply = self.control.take(ticket)
        except ControlError:
            self.close_control()
            raise
        if reply is None:
            return None
        ok, lines = reply
        if not ok or not lines:
            raise EnvironmentProblem(f"tmux new-window failed: {' '.join(lines)}")
        return lines[0].strip()

    def replies_due(self) -> int | None:
        """What to ``select`` on while commands sent await their reply: None when none do."""
        return self.control.fileno() if self.control is not None and self.control.waiting else None

    def panes(self, session: str) -> dict[str, Pane]:
        """The session's windows by id; empty when the session (or server) is gone."""
        fmt = "#{window_id}\t#{window_name}\t#{pane_dead}\t#{pane_dead_status}"
        ok, lines, _ = self._run("list-panes", "-s", "-t", f"={session}", "-F", fmt)
        if not ok:
            return {}
        panes = {}
        for line in lines:
            window_id, name, dead, status = ([*line.split("\t"), "", "", "", ""])[:4]
            panes[window_id] = Pane(
                window_id, name, dead == "1", int(status) if status.isdigit() else None
            )
        return panes

    def sessions(self) -> list[str]:
        """The names of the server's sessions; empty when no server runs."""
        result = self.server.cmd("list-sessions", "-F", "#{session_name}")
        return [] if result.returncode != 0 else [n for n in result.stdout if n]

    def live_panes(self, session: str) -> list[tuple[str, str]]:
        """``(window name, command)`` of each pane of ``session`` whose process lives."""
        fmt = "#{pane_dead}\t#{window_name}\t#{pane_current_command}"
        result = self.server.cmd("list-panes", "-s", "-t", f"={session}", "-F", fmt)
        if result.returncode != 0:
            return []
        rows = [([*line.split("\t"), "", ""])[:3] for line in result.stdout]
        return [(name, command) for dead, name, command in rows if dead != "1"]

    def first_pane(self, session: str) -> tuple[bool, str]:
        """Whether the session's first window's command has ended, and what it shows."""
        target = f"={session}:^"  # the lowest-numbered window, whatever base-index
        dead = self.server.cmd("display-message", "-p", "-t", target, "#{pane_dead}")
        shown = self.server.cmd("capture-pane", "-p", "-t", target)
        return (dead.stdout == ["1"] or dead.returncode != 0), "\n".join(shown.stdout).strip()

    def respawn_first(self, session: str, cwd: Path, command: str) -> bool:
        """Run ``command`` in the session's first window if it is agentflow's own (not a
        step's) and its command has ended (remain-on-exit keeps it); False otherwise."""
        target = f"={session}:^"
        dead = self.server.cmd("display-message", "-p", "-t", target, "#{pane_dead} #{window_name}")
        if dead.returncode != 0 or dead.stdout != ["1 agentflow"]:
            return False
        result = self.server.cmd("respawn-pane", "-t", target, "-c", str(cwd), command)
        return result.returncode == 0

    def new_first_window(self, session: str, cwd: Path, command: str) -> bool:
        """Run ``command`` in a new window put before the session's others (the first one
        is where attach and ``first_pane`` look); False when there is no such session."""
        result = self.server.cmd(
            "new-window", "-d", "-b", "-t", f"={session}:^", "-c", str(cwd), command
        )
        return result.returncode == 0

    def kill_window(self, window_id: str) -> None:
        """Close a window (its process gets SIGHUP); not waited for through a control
        client: the server does it in turn, before any later command."""
        if self.control is not None:
            try:
                self.control.forget(self.control.send(["kill-window", "-t", window_id]))
                return
            except ControlError:
                self.close_control()
        self._run("kill-window", "-t", window_id)

    def kill_session(self, session: str) -> None:
        self.close_control()  # it would only be told %exit
        self.server.cmd("kill-session", "-t", f"={session}")

    def waiter(self, channel: str) -> ProcessWaiter:
        """Something to ``select`` on that wakes when ``channel`` is signalled. tmux
        remembers one signal sent while nobody waits (not two); a wake-up is only ever a
        hint to look, never a result, and the periodic check is the backstop."""
        return ProcessWaiter([self.binary, "-S", str(self.socket_path), "wait-for", channel])

    def attach_argv(
        self, session: str, window: str | None, read_only: bool, note: str | None = None
    ) -> list[str]:
        """tmux's command line that attaches to ``session``; ``note`` shows in the status
        line once attached (for a few seconds)."""
        target = f"={session}:{window}" if window else f"={session}"
        # -E: the attaching person's DISPLAY, SSH_AUTH_SOCK, ... stay out of the session.
        argv = [self.binary, "-S", str(self.socket_path), "attach-session", "-E", "-t", target]
        if read_only:
            argv.append("-r")
        if note:
            # display-message -d (how long) is tmux 3.2's; before, display-time's default.
            try:
                out = subprocess.run([self.binary, "-V"], capture_output=True, text=True).stdout
            except OSError:
                out = ""
            m = re.search(r"(\d+)\.(\d+)", out)
            newer = m is not None and (int(m.group(1)), int(m.group(2))) >= (3, 2)
            argv += [";", "display-message", *(["-d", "6000"] if newer else []), note]
        return argv


_VERSION: list[tuple[int, int]] = []


def _tmux_version() -> tuple[int, int]:
    """tmux's version (0, 0 when it does not say); asked once."""
    if not _VERSION:
        try:
            out = subprocess.run([tmux_binary(), "-V"], capture_output=True, text=True).stdout
        except OSError:
            out = ""
        m = re.search(r"(\d+)\.(\d+)", out)
        _VERSION.append((int(m.group(1)), int(m.group(2))) if m else (0, 0))
    return _VERSION[0]


def _control_mode() -> bool:
    """Whether to use the control-mode path (tmux 3.3: ``attach -f no-output``)."""
    return _tmux_version() >= (3, 3) and not settings().tmux_no_control
