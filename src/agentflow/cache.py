"""The step cache: results of ``cache:`` steps kept across runs, under
``$AGENTFLOW_HOME/cache/<key>/``.

A step's key (``digest()`` of what makes its result: its rendered command, env, image,
inputs, the keys of the steps it needs, the content of the files its ``cache.inputs``
match) names a folder holding ``manifest.json`` (outputs, files with their sha256, the run
it came from) and ``files/<sha256>``. An entry is built in a hidden temporary folder and
renamed into place whole, so a store killed midway leaves no entry; an entry is used only
when its manifest reads back complete and every file hashes as recorded. Files a step
wrote are read, and restored, only through ``safefs`` (no link followed, regular files
only). A secret's value never enters the cache: the runner refuses to store a step whose
outputs or files hold one, and keys hash the secrets' names only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from agentflow import safefs
from agentflow.artifacts import _match
from agentflow.state import now

MANIFEST = "manifest.json"
FILES = "files"
_TMP = ".tmp-"
_CHUNK = 1 << 20
_STALE_TMP = 3600.0
"""Seconds after which ``gc`` takes a temporary folder for a store that was killed."""


def digest(value: JsonValue) -> str:
    """The SHA-256 (hex) of a JSON value, written canonically (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class CacheModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CachedFile(CacheModel):
    """A file of an entry: where it goes in the workspace, and what it must hash to."""

    path: str
    """Relative to the workspace, ``/`` between folders."""
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Entry(CacheModel):
    """``manifest.json``: a cached step result."""

    version: Literal[1] = 1
    key: str
    step: str
    run_id: str
    """The run the result came from (a restored step's ``cached_from``)."""
    outputs: dict[str, str] = Field(default_factory=dict)
    files: list[CachedFile] = Field(default_factory=list)
    size: int = Field(ge=0)
    stored_at: datetime


@dataclass(frozen=True)
class Source:
    """A file to store: its workspace path, and where to read it (``path`` below
    ``root``, through ``safefs``)."""

    rel: str
    path: Path
    root: Path


class NotCacheable(Exception):
    """A step's result cannot go into the cache; the message says why (one line)."""


def root(home: Path) -> Path:
    return home / "cache"


# --- keys -------------------------------------------------------------------------------


def hash_inputs(
    patterns: list[str], workspace: Path, hidden: frozenset[safefs.Identity], limit: int
) -> dict[str, str]:
    """Each file the globs match (relative to the workspace) and its sha256. Read through
    ``safefs``: a link, a FIFO, a file in agentflow's home, or more than ``limit`` bytes in
    all raises ``NotCacheable`` (the step then runs, uncached)."""
    ws = workspace.resolve()
    found: dict[str, str] = {}
    left = limit
    for pattern in patterns:
        matched, passed = _match(pattern.rstrip("/") or ".", ws, hidden)
        if passed:
            raise NotCacheable(f"cache input {passed[0].path} {passed[0].reason}")
        for rel, _ in matched:
            if rel in found:
                continue
            try:
                found[rel], size = _hash(ws / rel, ws, hidden, left)
            except OSError as e:
                raise NotCacheable(f"cache input {rel}: {e.strerror or e}") from None
            left -= size
    return dict(sorted(found.items()))


def _hash(
    path: Path, root: Path, hidden: frozenset[safefs.Identity], limit: int
) -> tuple[str, int]:
    """The sha256 of a regular file below ``root`` and its size, read through safefs, at
    most ``limit`` bytes (else ``TooLarge``)."""
    sha = hashlib.sha256()
    size = 0
    with safefs.open_read(path, root, hidden) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            size += len(chunk)
            if size > limit:
                raise safefs.TooLarge(0, "is larger than the cache may hold", str(path))
            sha.update(chunk)
    return sha.hexdigest(), size


# --- storing ----------------------------------------------------------------------------


def store(
    home: Path,
    key: str,
    step: str,
    run_id: str,
    outputs: dict[str, str],
    sources: list[Source],
    limit: int,
    secret_values: list[str],
) -> Entry | None:
    """Keep a step's result under ``key``: built in a temporary folder, renamed into
    place whole. None when an entry for the key is there already. ``NotCacheable`` when
    a file cannot be read safely or the files exceed ``limit``; ``OSError`` for the
    cache's own disk."""
    base = root(home)
    final = base / key
    if lookup(home, key) is not None:
        return None
    if final.exists() or final.is_symlink():
        _remove(final)  # an entry that is not whole (a file gone): this result replaces it
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{_TMP}{key[:16]}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = _copy_files(tmp / FILES, sources, limit, [v.encode() for v in secret_values if v])
        entry = Entry(
            key=key, step=step, run_id=run_id, outputs=outputs, files=files,
            size=sum(f.size for f in files), stored_at=now(),
        )  # fmt: skip
        _write_synced(tmp / MANIFEST, entry.model_dump_json(indent=2).encode())
        try:
            os.rename(tmp, final)  # the one step that makes the entry exist
        except OSError:
            if (final / MANIFEST).exists():
                return None  # another run stored the same key meanwhile
            raise
        return entry
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_files(
    dest: Path, sources: list[Source], limit: int, secret_values: list[bytes]
) -> list[CachedFile]:
    dest.mkdir()
    overlap = max((len(v) for v in secret_values), default=1) - 1
    files: dict[str, CachedFile] = {}
    left = limit
    for src in sources:
        if src.rel in files:
            continue
        sha = hashlib.sha256()
        size = 0
        part = dest / f".part-{secrets.token_hex(4)}"
        before = b""  # the end of the previous chunk: a secret may straddle two
        try:
            with safefs.open_read(src.path, src.root) as f, part.open("xb") as out:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    size += len(chunk)
                    if size > left:
                        raise NotCacheable(f"{src.rel} would take the cache past its limit")
                    seen = before + chunk
                    if any(v in seen for v in secret_values):
                        raise NotCacheable(f"{src.rel} holds a secret's value")
                    before = seen[-overlap:] if overlap else b""
                    sha.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            raise NotCacheable(f"{src.rel} cannot be kept ({e.strerror or e})") from None
        left -= size
        part.replace(dest / sha.hexdigest())
        files[src.rel] = CachedFile(path=src.rel, size=size, sha256=sha.hexdigest())
    return sorted(files.values(), key=lambda f: f.path)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --- looking up and restoring -----------------------------------------------------------


def lookup(home: Path, key: str) -> Entry | None:
    """The entry stored under ``key`` when it is whole: its manifest reads back, names
    this key, and every file is there with its recorded size and hash. Else None (a miss)."""
    folder = root(home) / key
    try:
        entry = Entry.model_validate_json((folder / MANIFEST).read_bytes())
    except (OSError, ValidationError):
        return None
    if entry.key != key:
        return None
    for f in entry.files:
        try:
            sha, size = _hash(folder / FILES / f.sha256, folder / FILES, frozenset(), f.size)
        except OSError:
            return None
        if (sha, size) != (f.sha256, f.size):
            return None
    return entry


def restore(home: Path, entry: Entry, workspace: Path, hidden: frozenset[safefs.Identity]) -> bool:
    """Write an entry's files into the workspace through safefs, each checked by hash as
    it is copied. False when one does not match (the step then runs)."""
    folder = root(home) / entry.key / FILES
    for f in entry.files:
        sha = hashlib.sha256()

        def chunks(f: CachedFile = f, sha: hashlib._Hash = sha) -> Iterator[bytes]:
            with safefs.open_read(folder / f.sha256, folder) as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    sha.update(chunk)
                    yield chunk

        target = workspace / f.path
        safefs.write_chunks(target, workspace, chunks(), hidden=hidden)
        if sha.hexdigest() != f.sha256:
            with contextlib.suppress(OSError):
                safefs.write_chunks(target, workspace, [], hidden=hidden)
            return False
    with contextlib.suppress(OSError):
        os.utime(root(home) / entry.key)  # used now: gc keeps the recently used
    return True


# --- pruning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruned:
    removed: list[str]
    kept: int
    size: int


def gc(home: Path, limit: int) -> Pruned:
    """Remove entries that are not whole (a file gone or changed, no manifest), temporary
    folders of stores killed long ago, then the least recently used entries until the
    rest fit in ``limit`` bytes."""
    base = root(home)
    if not base.is_dir():
        return Pruned([], 0, 0)
    removed: list[str] = []
    whole: list[tuple[float, int, str]] = []
    for child in sorted(base.iterdir()):
        if child.name.startswith(_TMP):
            if time.time() - child.lstat().st_mtime > _STALE_TMP:
                shutil.rmtree(child, ignore_errors=True)
            continue
        entry = lookup(home, child.name) if child.is_dir() else None
        if entry is None:
            _remove(child)
            removed.append(child.name)
            continue
        whole.append((child.stat().st_mtime, entry.size, child.name))
    total = sum(size for _, size, _ in whole)
    kept = len(whole)
    for _, size, name in sorted(whole):  # the least recently used first
        if total <= limit:
            break
        _remove(base / name)
        removed.append(name)
        total -= size
        kept -= 1
    return Pruned(removed, kept, total)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
