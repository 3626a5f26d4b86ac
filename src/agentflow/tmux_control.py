"""A long-lived tmux control-mode client (``tmux -C``): commands without a process each.

Every ``tmux`` command run as its own client is a process (an exec, a connect, the
server's reply), several milliseconds a step. A control-mode client stays attached to the
run's session: a command is one line written to its standard input, its reply a block
``%begin TIME NUMBER FLAGS`` … ``%end``/``%error`` with the same three numbers on its
standard output, where notifications (``%window-add``, ``%exit``, …) come between blocks.
The client is attached with ``-f no-output``: no step's output is sent to it.

Nothing here is needed for correctness: whoever finds a client dead (``ControlError``)
goes back to a tmux process per command.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from typing import Protocol

REPLY_WAIT = 10.0
"""Seconds to wait for the reply to a command before the client is given up."""
_BLOCK = re.compile(rb"%(begin|end|error) (\d+) (\d+) (\d+)")


Reply = tuple[bool, list[str]]
"""A command's reply: whether it succeeded, and the lines it printed."""


class ControlError(Exception):
    """The control client is gone or did not answer: use a client process instead."""


def quote(arg: str) -> str:
    """``arg`` as one word of tmux's command language (single quotes, as in sh)."""
    return "'" + arg.replace("'", "'\\''") + "'"


def line_of(args: list[str]) -> str | None:
    """The command line for ``args``; None when it cannot be one line (a newline)."""
    if any(c in a for a in args for c in "\n\r\0"):
        return None
    return " ".join([args[0], *(quote(a) for a in args[1:])])


class ControlClient:
    """One ``tmux -C attach-session`` to ``session``, answering one command at a time."""

    def __init__(self, binary: str, socket: str, session: str, env: dict[str, str]) -> None:
        self.session = session
        self.proc = subprocess.Popen(
            [binary, "-S", socket, "-C", "attach-session", "-f", "no-output", "-t", f"={session}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,  # the server's own (``server_env``): nothing of a run's
            cwd="/",
            start_new_session=True,  # Ctrl-C at the terminal is for agentflow, not for it
        )
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self._out = self.proc.stdout.fileno()
        self._in = self.proc.stdin.fileno()
        os.set_blocking(self._out, False)
        self._buffer = b""
        self._block: tuple[bytes, list[bytes]] | None = None
        self._sent = 0
        """Commands written so far: the ticket of the next one."""
        self._answered = 0
        """Replies read so far: they come in the order the commands were sent."""
        self._replies: dict[int, Reply] = {}
        self._forgotten: set[int] = set()
        self.alive = True
        self._seen_attach = False
        # The attach itself answers first (a block of flags 0): wait for it, so that a
        # client that could not attach (no such session) is known at once.
        deadline = time.monotonic() + REPLY_WAIT
        while self.alive and not self._seen_attach:
            self._read(deadline)
        if not self.alive:
            self.close()
            raise ControlError("tmux control client could not attach")

    def fileno(self) -> int:
        """What to ``select`` on: readable when a reply or a notification came."""
        return self._out

    def run(self, args: list[str]) -> Reply:
        """Run one command: (whether it succeeded, the lines it printed)."""
        return self.wait(self.send(args))

    def send(self, args: list[str]) -> int:
        """Write one command without waiting for it; its ticket, for ``wait`` or
        ``take`` (replies come in the order of the commands)."""
        line = line_of(args)
        if line is None:
            raise ControlError("a command of more than one line")
        if not self.alive:
            raise ControlError("tmux control client is gone")
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(self._in, data) :]
        except OSError as e:
            self._dead()
            raise ControlError(f"tmux control client is gone ({e})") from e
        self._sent += 1
        return self._sent - 1

    def wait(self, ticket: int) -> Reply:
        """The reply to the command of ``ticket``, waited for."""
        deadline = time.monotonic() + REPLY_WAIT
        while ticket not in self._replies:
            self._read(deadline)
        return self._replies.pop(ticket)

    def take(self, ticket: int) -> Reply | None:
        """The reply to ``ticket`` if it came (read by ``poll``, ``wait`` or ``run``)."""
        return self._replies.pop(ticket, None)

    def forget(self, ticket: int) -> None:
        """Nobody will ask for the reply to ``ticket``: dropped when it comes."""
        if self._replies.pop(ticket, None) is None:
            self._forgotten.add(ticket)

    @property
    def waiting(self) -> bool:
        """Whether a command sent has not been answered yet."""
        return self._answered < self._sent

    def poll(self) -> None:
        """Read what the client printed so far, without waiting."""
        self._read(None)

    def _read(self, deadline: float | None) -> None:
        """Read and parse what the client printed: all there is (deadline None), or at
        least something, waiting until ``deadline``."""
        if not self.alive:
            raise ControlError("tmux control client is gone")
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                self._dead()
                raise ControlError("tmux control client did not answer")
        while True:
            try:
                chunk = os.read(self._out, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._dead()
                break
            self._buffer += chunk
            if deadline is not None and len(chunk) < 65536:
                break
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        m = _BLOCK.fullmatch(line)
        if self._block is not None:
            key, out = self._block
            if m and m.group(1) != b"begin" and line.split(b" ", 1)[1] == key:
                self._block = None
                if int(m.group(4)) & 1:  # a command of ours (0: the attach itself)
                    ticket = self._answered
                    self._answered += 1
                    if ticket in self._forgotten:
                        self._forgotten.discard(ticket)
                    else:
                        text = [o.decode("utf-8", "replace") for o in out]
                        self._replies[ticket] = (m.group(1) == b"end", text)
                else:  # the attach's own answer: an error is no client
                    self._seen_attach = True
                    if m.group(1) == b"error":
                        self._dead()
            else:
                out.append(line)
        elif m and m.group(1) == b"begin":
            self._block = (line.split(b" ", 1)[1], [])
        elif line.startswith(b"%exit"):
            self._dead()
        # Other notifications (%window-add, %session-changed, ...): nothing to do.

    def _dead(self) -> None:
        self.alive = False

    def close(self) -> None:
        self.alive = False
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the client detaches at end of input
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Waiter(Protocol):
    """Something to ``select`` on that tells when a tmux channel was signalled."""

    def fileno(self) -> int: ...

    def woke(self) -> bool:
        """After ``fileno`` turned readable: whether the channel was signalled (the
        waiter then waits again)."""
        ...

    def close(self) -> None: ...


class ProcessWaiter:
    """Waits for a tmux channel in a ``tmux wait-for`` process, started again after each
    signal. (Not in a control client: there ``wait-for`` answers at once, without waiting.)
    The channel rings only for a window that died unreported, so a run whose steps end
    normally starts one waiter in all."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # closes when it exits: something to select() on
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C at the terminal is for agentflow, not for it
        )

    def fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def woke(self) -> bool:
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = self._start()
        return True

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
