"""Artifacts: files a step lists in ``artifacts:``, kept with the run when it succeeds.

Each pattern (a path or a glob, relative to the step's folder in the workspace, like the
paths of ``success``) is matched on the host, where the workspace is (a bind mount for
Docker, the shared file system for Slurm). Every file matched (a folder: every file in
it) is copied to ``artifacts/<step>/<path in the workspace>`` in the run directory, or,
when it is larger than ``AGENTFLOW_ARTIFACT_COPY_MAX``, only recorded; either way by its
path, size and sha256, in ``artifacts.json`` (the manifest) and in the reports.

Reads never leave the workspace: a symbolic link is followed only to a regular file
inside it (checked on the file actually opened, so a link swapped in meanwhile does not
count), ``**`` and folders do not descend through links, and agentflow's home is never
collected when it lies inside the workspace (by identity, device and inode, whatever path
leads there: ``safefs``). A pattern that yields no file fails the step
with a message that says why.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow import safefs
from agentflow.store import RunDir

COPY_DIR = "artifacts"
"""The folder of the run directory that holds the copies, one folder per step."""
MANIFEST = "artifacts.json"
"""The manifest in the run directory: every step's artifacts."""
_CHUNK = 1 << 20
_MAGIC = frozenset("*?[")


class ArtifactModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Artifact(ArtifactModel):
    """One file kept (or recorded) for a step."""

    path: str
    """Where the file was, relative to the workspace (``/`` between folders)."""
    size: int
    """Its size in bytes."""
    sha256: str
    """The SHA-256 of its content, in hex."""
    copied: bool
    """Whether a copy is in the run directory (False: larger than the copy limit, only
    recorded by path, size and hash)."""
    stored: str | None = None
    """Where the copy is, relative to the run directory (``artifacts/<step>/<path>``)."""


class Skipped(ArtifactModel):
    """A path a pattern matched that was not collected, and why."""

    path: str
    reason: str


class StepArtifacts(ArtifactModel):
    """What one step's ``artifacts:`` collected, when its attempt succeeded."""

    attempt: int
    collected_at: datetime
    patterns: list[str]
    """The patterns, with their expressions filled in."""
    files: list[Artifact]
    skipped: list[Skipped] = Field(default_factory=list)


class Manifest(ArtifactModel):
    """``artifacts.json``: the artifacts of every step that has collected some."""

    version: Literal[1] = 1
    steps: dict[str, StepArtifacts] = Field(default_factory=dict)


class ArtifactError(Exception):
    """The artifacts cannot be collected; the message becomes the step's note."""


def read_manifest(run: RunDir) -> Manifest:
    """The run's manifest; empty when there is none (or it cannot be read)."""
    try:
        return Manifest.model_validate_json((run.path / MANIFEST).read_bytes())
    except (OSError, ValidationError):
        return Manifest()


def save(
    run: RunDir, step_id: str, collected: StepArtifacts, redact: Callable[[str], str] = str
) -> None:
    """Record one step's artifacts in the manifest (replaced atomically), every secret's
    value masked by ``redact`` (a file's name may hold one; reports and history read it)."""
    manifest = read_manifest(run)
    steps = {**manifest.steps, step_id: collected}
    run.write_text(MANIFEST, redact(Manifest(steps=steps).model_dump_json(indent=2)))


@dataclass(frozen=True)
class Collector:
    """Where a step's artifacts are looked for and where they go."""

    root: Path
    """The workspace on the host."""
    step_dir: Path
    """The step's folder on the host (patterns are relative to it)."""
    dest: Path
    """``artifacts/<step>`` in the run directory."""
    copy_max: int
    """Files larger than this many bytes are recorded, not copied."""
    exclude: tuple[Path, ...] = ()
    """Folders never collected (agentflow's home, when it lies in the workspace)."""

    def collect(self, patterns: list[str]) -> tuple[list[Artifact], list[Skipped]]:
        """Match, then copy (or hash) every file; ArtifactError when a pattern yields no
        file or a file cannot be read or copied. On error nothing is left half-copied."""
        try:
            return self._collect(patterns)
        except (RecursionError, RuntimeError) as e:  # folders nested past the stack; a loop
            raise ArtifactError(f"artifacts: cannot walk the workspace ({e})") from None

    def _collect(self, patterns: list[str]) -> tuple[list[Artifact], list[Skipped]]:
        root = self.root.resolve()
        exclude = safefs.identities(self.exclude)
        chosen: dict[str, Path] = {}  # workspace-relative path -> the real file
        skipped: dict[str, Skipped] = {}
        for pattern in patterns:
            rel = _relative(pattern, self.step_dir.absolute(), self.root.absolute())
            found, passed = _match(rel, root, exclude)
            if not found and passed:
                raise ArtifactError(f"artifacts: {passed[0].path} {passed[0].reason}")
            if not found:
                raise ArtifactError(f"artifacts: {pattern} matches nothing")
            for path, real in found:
                chosen.setdefault(path, real)
            skipped.update((s.path, s) for s in passed)
        partial = self.dest.with_name(f".{self.dest.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            files = [
                self._keep(rel, real, root, partial, exclude)
                for rel, real in sorted(chosen.items())
            ]
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.dest)  # an earlier attempt's (a service run again)
            if partial.exists():
                partial.rename(self.dest)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return files, sorted(skipped.values(), key=lambda s: s.path)

    def _keep(
        self, rel: str, real: Path, root: Path, partial: Path, exclude: frozenset[safefs.Identity]
    ) -> Artifact:
        """Copy (or only hash) one file, reading it through a descriptor that is checked
        to be a regular file inside the workspace."""
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            raise ArtifactError(f"artifacts: {rel} cannot be read ({e.strerror or e})") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"artifacts: {rel} is no longer a regular file")
            opened = _opened_path(fd)
            if opened is not None and not opened.is_relative_to(root):
                raise ArtifactError(f"artifacts: {rel} leads outside the workspace")
            if opened is not None and safefs.under_hidden(opened, root, exclude):
                raise ArtifactError(f"artifacts: {rel} is in agentflow's home")
            digest = hashlib.sha256()
            size = 0
            copy = info.st_size <= self.copy_max
            target = partial / rel
            try:
                # No further than the size it had when opened: a file a step keeps
                # growing (or a FIFO swapped in) cannot hold the host in this loop.
                chunks = iter(lambda: f.read(min(_CHUNK, info.st_size - size)), b"")
                if not copy:
                    for chunk in chunks:
                        digest.update(chunk)
                        size += len(chunk)
                    return Artifact(path=rel, size=size, sha256=digest.hexdigest(), copied=False)
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("xb") as out:
                    for chunk in chunks:
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except OSError as e:  # a read error, or a full disk in the run directory
                raise ArtifactError(f"artifacts: cannot keep {rel} ({e.strerror or e})") from None
            with contextlib.suppress(OSError):
                os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        stored = f"{COPY_DIR}/{self.dest.name}/{rel}"
        return Artifact(path=rel, size=size, sha256=digest.hexdigest(), copied=True, stored=stored)


def _relative(pattern: str, step_dir: Path, root: Path) -> str:
    """The pattern as a path relative to the workspace (``root``, as ``step_dir`` is given:
    neither resolved), normalised, with no ``..`` left."""
    if pattern.startswith("/"):
        raise ArtifactError(
            f"artifacts: {pattern} is an absolute path: artifacts are read from the "
            "workspace, give a path relative to the step's folder"
        )
    base = Path(os.path.relpath(step_dir, root)).as_posix()
    rel = posixpath.normpath(posixpath.join(base, pattern))
    if rel == ".." or rel.startswith("../"):
        raise ArtifactError(f"artifacts: {pattern} leads outside the workspace")
    return rel


def _match(
    rel: str, root: Path, exclude: frozenset[safefs.Identity]
) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """The files a pattern (relative to the workspace) yields, as (workspace-relative path,
    real path), and what it matched but passed over."""
    found: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    for name in _glob(root, rel.split("/") if rel != "." else [], exclude):
        for path, real, why in _files(root, name, exclude):
            if why is None:
                found.append((path, real))
            else:
                skipped.append(Skipped(path=path, reason=why))
    return found, skipped


def _glob(
    folder: Path, parts: list[str], exclude: frozenset[safefs.Identity], prefix: str = ""
) -> Iterator[str]:
    """Workspace-relative names matching ``parts`` below ``folder``: ``*``, ``?`` and
    ``[...]`` within a name (not matching a leading dot unless the pattern has one),
    ``**`` for any depth of folders (not hidden ones, not through links)."""
    if not parts:
        yield prefix or "."
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from _glob(folder, rest, exclude, prefix)
        for entry in _entries(folder):
            below = folder / entry.name
            if (
                entry.is_dir(follow_symlinks=False)
                and not entry.name.startswith(".")
                and (entry.stat(follow_symlinks=False).st_dev, entry.inode()) not in exclude
            ):
                yield from _glob(below, parts, exclude, _join(prefix, entry.name))
    elif _MAGIC & set(head):
        for entry in _entries(folder):
            hidden_ok = head.startswith(".") or not entry.name.startswith(".")
            if hidden_ok and fnmatch.fnmatchcase(entry.name, head):
                yield from _glob(folder / entry.name, rest, exclude, _join(prefix, entry.name))
    elif os.path.lexists(folder / head):
        yield from _glob(folder / head, rest, exclude, _join(prefix, head))


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:  # not a folder, gone, unreadable: matches nothing below it
        return []


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _files(
    root: Path, rel: str, exclude: frozenset[safefs.Identity]
) -> Iterator[tuple[str, Path, str | None]]:
    """(workspace-relative path, real path, why it is passed over or None) of each file
    that ``rel`` names: itself, or every file in it when it is a folder."""
    path = root / rel if rel != "." else root
    try:
        info = path.lstat()
    except OSError:
        return
    real = Path(os.path.realpath(path))  # a link loop is a path too, not an error
    if not real.is_relative_to(root):
        yield rel, real, "leads outside the workspace"
        return
    if safefs.under_hidden(real, root, exclude):
        yield rel, real, "is in agentflow's home"
        return
    if stat.S_ISLNK(info.st_mode):
        if real.is_dir():
            yield rel, real, "is a link to a folder (name the folder itself)"
        elif real.is_file():
            yield rel, real, None
        else:
            yield rel, real, "is a broken link"
        return
    if stat.S_ISREG(info.st_mode):
        yield rel, real, None
    elif stat.S_ISDIR(info.st_mode):
        for entry in _entries(path):
            yield from _files(root, _join("" if rel == "." else rel, entry.name), exclude)
    else:
        yield rel, real, "is not a regular file"


def _opened_path(fd: int) -> Path | None:
    """The real path of an open file (Linux); None where the system cannot say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def summary(collected: StepArtifacts) -> str:
    """One line for the ``artifacts`` event: how many files, how large, what was only
    recorded."""
    files = collected.files
    total = sum(a.size for a in files)
    text = f"{len(files)} file{'s' if len(files) != 1 else ''}, {human_size(total)}"
    recorded = [a for a in files if not a.copied]
    if recorded:
        shown = ", ".join(f"{a.path} ({human_size(a.size)})" for a in recorded[:3])
        more = f" and {len(recorded) - 3} more" if len(recorded) > 3 else ""
        text += f"; recorded only (over the copy limit): {shown}{more}"
    if collected.skipped:
        text += f"; passed over {len(collected.skipped)}: " + ", ".join(
            f"{s.path} {s.reason}" for s in collected.skipped[:3]
        )
    return text


def human_size(size: int) -> str:
    """``512 B``, ``1.5 kB``, ``12.3 MB``, ``250 GB`` (powers of 1000, as the copy limit)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
