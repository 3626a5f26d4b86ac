"""Commands in the step's sandbox: where they run (``workdir``) and ``command_help``, a
command's ``--help`` (one command, no list, pipe or redirection; outside Docker, where it
runs on this machine without approval, only plain words and a program's own ``--help``)."""

from __future__ import annotations

import os
import re
import shlex
import shutil

from agentflow.agent.tools.files import is_dir, names_of
from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.schemas import CommandArgs
from agentflow.agent.tools.text import mask_edges
from agentflow.textsafe import printable

HELP_TIMEOUT = 10.0
HELP_BYTES = 24_000
"""Bytes of a ``--help`` output kept (its start, where the usage is)."""
COMMAND_MAX = 300
WORDS_MAX = 6
"""Words of a command run on this machine (its ``--help`` not counted)."""
PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:@+=,-]+")
"""A word the shell takes as it is: no quote, ``$``, glob, ``~`` or operator."""
MULTI_CALL = frozenset({"busybox", "toybox"})
"""Programs whose applets (``kill``, ``killall``, ``rm``…) may act on their arguments
before they read ``--help``: not run on this machine, also when linked as an applet."""
# An argument naming a path out of the step's folder: absolute (also after `if=`,
# `file:`…) or through `..`.
_OUT_OF_FOLDER = re.compile(r"(^|[=:,@+])/|(^|/)\.\.(/|$)")
_ON_THIS_MACHINE = (
    "outside Docker command_help runs on this machine without approval, so it takes at "
    f"most {WORDS_MAX} plain words (letters, digits, _ . / : @ + = , -), no option but "
    "python's -m, arguments inside the step's folder; --help is added (e.g. "
    "`python3 -m pkg.train`, `./train.sh`, `git commit`)"
)


def workdir(scene: Scene) -> str:
    """Where commands run: the step's rendered workdir when the scene has it, else its
    folder as written (when that is plain and there), else the workspace."""
    assert scene.sandbox is not None
    if scene.workdir is not None:
        return scene.workdir
    step = next((s for s in scene.workflow.steps if s.id == scene.step), None)
    rel = step.workdir if step is not None and step.workdir else None
    if rel is not None:
        try:
            names = names_of(scene, rel)
        except ToolError:
            names = []
        rel = "/".join(names) if "${{" not in rel and names and is_dir(scene, names) else None
    return scene.sandbox.workdir(rel)


def command_help(scene: Scene, a: CommandArgs) -> str:
    """The start of ``COMMAND --help``'s output, run in the step's sandbox and folder."""
    box = scene.sandbox
    if box is None:
        raise ToolError("there is no sandbox yet (planning before it starts): nothing can run")
    command = _simple_command(a.command)
    # (Imported here: the Docker SDK weighs 20 MB, which a local run does without.)
    from agentflow.sandbox.docker import DockerSandbox

    if isinstance(box, DockerSandbox):  # the container is the boundary
        asks = re.search(r"(^|\s)(--help|-h|help)$", command)
        script = run = command if asks else f"{command} --help"
    else:
        words = _plain_words(command)
        _refuse_multi_call(words[0], workdir(scene), scene.env)
        script = " ".join([*words, "--help"])
        # `exec`: a program, never a builtin of the shell (`kill PID`, `trap CMD EXIT`
        # act before any --help is read). Without POSIXLY_CORRECT a GNU program reads
        # the trailing --help before it acts on its arguments (`rm x --help`).
        run = f"(unset POSIXLY_CORRECT; exec {script})"
    # On a line of its own (a `#` in it ends there); the start of the output is kept,
    # where the usage is.
    wrapped = f'{{ {run}\necho "@@exit $?"; }} </dev/null 2>&1 | head -c {HELP_BYTES}'
    code, out = box.exec(wrapped, workdir(scene), HELP_TIMEOUT, scene.env or None)
    m = re.search(r"@@exit (\d+)\s*$", out)
    if code == 124 and m is None:
        head = f"$ {script}\n(stopped at the time limit, {HELP_TIMEOUT:g}s)"
    elif m is not None:
        head = f"$ {script}\n(exit {m.group(1)})"
        out = out[: m.start()]
    elif code == 0:  # `head` cut the output, and with it the exit line
        head = f"$ {script}\n(output cut at {HELP_BYTES} bytes)"
    else:  # the shell did not start: a workdir that is not there, a sandbox gone
        head = f"$ {script}\n(not run: exit {code})"
    body = printable(mask_edges(out, scene.redact, m is None))
    return f"{head}\n{body.rstrip()}" if body.strip() else f"{head}\n(no output)"


def _simple_command(command: str) -> str:
    """``command`` when it is one command with its arguments (quoting and variables are
    the shell's): no list, pipe, redirection or command substitution, one line."""
    command = command.strip()
    if not command:
        raise ToolError("give a command, like `python3 -m pkg.train`")
    if len(command) > COMMAND_MAX:
        raise ToolError(f"the command is {len(command)} characters: at most {COMMAND_MAX}")
    if any(c in command for c in "\n\r\0"):
        raise ToolError("give the command on one line")
    if "`" in command or "$(" in command:
        raise ToolError("no command substitution (`…`, $(…)): give one command")
    try:
        tokens = list(shlex.shlex(command, posix=True, punctuation_chars=True))
    except ValueError as e:
        raise ToolError(f"the command cannot be read: {e}") from None
    ops = [t for t in tokens if t and all(c in "();<>|&" for c in t)]
    if ops:
        raise ToolError(
            f"one command with its arguments: {ops[0]!r} is not allowed (its --help is run)"
        )
    return command


def _plain_words(command: str) -> list[str]:
    """The words of ``command`` (a trailing ``--help`` left out) when it may run on this
    machine: plain words, at most ``WORDS_MAX``, no ``VAR=value``, no option but ``-m``,
    no argument naming a path out of the step's folder; ToolError saying which rule."""
    words = re.split(r"[ \t]+", command.strip())
    if words[-1] == "--help":
        words.pop()
    if not words:
        raise ToolError(f"give the command whose --help to show: {_ON_THIS_MACHINE}")
    for word in words:
        if not PLAIN_WORD.fullmatch(word):
            raise ToolError(f"{word[:60]!r} is not a plain word: {_ON_THIS_MACHINE}")
    if len(words) > WORDS_MAX:
        raise ToolError(f"the command has {len(words)} words: {_ON_THIS_MACHINE}")
    if "=" in words[0]:
        raise ToolError(f"{words[0]!r}: no VAR=value before the command: {_ON_THIS_MACHINE}")
    for i, word in enumerate(words):
        if word.startswith("-") and (word != "-m" or i == 0):
            raise ToolError(f"the option {word!r} is not allowed: {_ON_THIS_MACHINE}")
        if i > 0 and _OUT_OF_FOLDER.search(word):
            raise ToolError(f"{word!r} names a path out of the step's folder: {_ON_THIS_MACHINE}")
        if i > 0 and word.isdigit():  # `kill 1234` of a kill that reads no --help
            raise ToolError(f"{word!r}: no number as an argument: {_ON_THIS_MACHINE}")
    return words


def _refuse_multi_call(program: str, cwd: str, env: dict[str, str]) -> None:
    """ToolError when ``program`` is a multi-call binary (``MULTI_CALL``), by its name or
    by the file it resolves to on this machine (``killall`` is busybox on Alpine)."""
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    found = os.path.join(cwd, program) if "/" in program else shutil.which(program, path=path)
    names = {os.path.basename(program)}
    if found is not None:
        names.add(os.path.basename(os.path.realpath(found)))
    if names & MULTI_CALL:
        raise ToolError(
            f"{program!r} is (or links to) {'/'.join(sorted(names & MULTI_CALL))}, whose "
            f"applets may act before reading --help: {_ON_THIS_MACHINE}"
        )
