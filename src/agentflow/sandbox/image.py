"""The image of a Docker sandbox: the workflow's ``image`` (pulled when missing), or one
built from ``build``, whose context is archived through the guarded path.

The build context is usually the workspace, which steps write. So the archive is made
here, not by docker-py: every path is read through ``safefs`` (no link followed on the
way, a link itself archived as a link), FIFOs, devices and sockets are left out (one at
``.dockerignore`` would have blocked the build forever), and so are agentflow's home and
its tmux socket's folder, found by identity: an image built from the workspace must not
carry other runs' logs into the sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import docker
import docker.errors
import requests.exceptions
from docker.utils.build import exclude_paths

from agentflow import safefs
from agentflow.errors import EnvironmentProblem, UsageError
from agentflow.textsafe import clip_words
from agentflow.workflow.model import Sandbox as SandboxConfig

DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
"""What docker-py raises when the daemon is gone: its own errors, and some of requests'
(a connection aborted mid-call) that it does not wrap."""
LABEL_WORKFLOW = "agentflow.workflow"
DOCKERIGNORE_MAX = 1 << 20


def first_line(e: BaseException) -> str:
    """A Docker error's first line, cut at a word boundary."""
    text = str(e).strip()
    return clip_words(text.splitlines()[0], 200) if text else type(e).__name__


def daemon_says(e: BaseException) -> str:
    """What the Docker daemon said (an API error's explanation, without the request's URL
    and status before it), whole: the run's events keep it; its lines cut it."""
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    text = explanation if isinstance(explanation, str) and explanation.strip() else str(e)
    return " ".join(text.split()) or type(e).__name__


def host_source(workspace: Path, key: str, given: str, writable: list[Path] | None = None) -> Path:
    """A host folder the workflow names (a mount's source, the build context). Where its
    path enters a folder a step can write (the workspace, a read-write mount: found by
    identity, however either is spelled), the rest of it must be a real folder reached
    without a link: a step may have replaced one with a link to any host folder."""
    where = f"{key}: {given}"
    lexical = Path(os.path.normpath(workspace.absolute() / given))
    roots = safefs.identities(writable if writable is not None else [workspace])
    for depth in range(1, len(lexical.parts)):
        prefix = Path(*lexical.parts[:depth])
        if safefs.identity(prefix) not in roots:
            continue  # still outside whatever a step can write: links here are yours
        try:
            st = safefs.lstat(lexical, prefix)
            if stat.S_ISLNK(st.st_mode):
                raise safefs.UnsafePath(errno.ELOOP, "is a symbolic link", str(lexical))
        except FileNotFoundError:
            raise UsageError(f"{where} does not exist (looked for {lexical})") from None
        except OSError as e:
            raise UsageError(
                f"{where}: {Path(e.filename or given).name} {e.strerror}: a folder in the "
                "workspace or a writable mount must be a real one (a step could have made "
                "the link); give the link's target instead"
            ) from None
        return prefix.resolve() / lexical.relative_to(prefix)
    try:
        source = lexical.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a loop of links
        raise UsageError(f"{where} does not exist (looked for {lexical})") from None
    return source


def resolve(
    client: docker.DockerClient,
    config: SandboxConfig,
    *,
    workspace: Path,
    workflow: str,
    hidden: list[Path],
    writable: list[Path],
    log: Callable[[str], None],
    build_log: Path | None,
) -> str:
    """The image to run: ``image`` (pulled if missing), or built from ``build``."""
    if config.build is not None:
        context = host_source(workspace, "sandbox.build.context", config.build.context, writable)
        return _build(client, config, context, workflow, hidden, log, build_log)
    if not config.image:
        raise UsageError(
            "the docker sandbox needs `sandbox.image` or `sandbox.build` in the workflow"
        )
    try:
        client.images.get(config.image)
    except docker.errors.ImageNotFound:
        log(f"pulling {config.image}")
        try:
            client.images.pull(config.image)
        except DOCKER_ERRORS as e:
            # What to do first: the daemon's reason can be long, and is cut on screen.
            raise EnvironmentProblem(
                f"image {config.image} is not on this machine and cannot be pulled (build "
                f"it with `docker build -t`, or give `sandbox.build`): {daemon_says(e)}"
            ) from None
    return config.image


def _build(
    client: docker.DockerClient,
    config: SandboxConfig,
    context: Path,
    workflow: str,
    hidden: list[Path],
    log: Callable[[str], None],
    build_log: Path | None,
) -> str:
    build = config.build
    assert build is not None
    dockerfile = Path(os.path.normpath(context / build.dockerfile))
    try:
        mode = safefs.lstat(dockerfile, context).st_mode
    except OSError:
        mode = 0
    # A link is fine here: the daemon reads it inside the context, never beyond.
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UsageError(f"sandbox.build: no Dockerfile at {dockerfile}")
    tag = f"agentflow/{workflow.lower()}:latest"
    log(f"building {tag} from {dockerfile}")
    lines: list[str] = []
    out = build_log.open("a", encoding="utf-8") if build_log else None
    try:
        with archive(context, dockerfile.relative_to(context).as_posix(), hidden) as tar:
            stream = client.api.build(
                fileobj=tar,
                custom_context=True,
                dockerfile=dockerfile.relative_to(context).as_posix(),
                tag=tag,
                buildargs=dict(build.args),
                rm=True,
                forcerm=True,  # no stopped build containers left behind by a failed build
                decode=True,
                labels={LABEL_WORKFLOW: workflow},
            )
            for chunk in stream:
                text = chunk.get("stream") or chunk.get("status") or ""
                if "error" in chunk:
                    text = f"ERROR: {chunk['error']}\n"
                for line in text.splitlines():
                    if line.strip():
                        lines.append(line)
                        log(line)
                        if out:
                            out.write(line + "\n")
                if "error" in chunk:
                    tail = "\n".join(lines[-8:])
                    raise EnvironmentProblem(f"building {tag} failed:\n{tail}")
    except DOCKER_ERRORS as e:
        raise EnvironmentProblem(f"building {tag} failed: {first_line(e)}") from None
    except (OSError, RecursionError) as e:  # folders nested past the stack, say
        raise EnvironmentProblem(
            f"building {tag} failed: cannot archive the build context ({e})"
        ) from None
    finally:
        if out:
            out.close()
    return tag


@contextlib.contextmanager
def archive(context: Path, dockerfile: str, hidden: list[Path]) -> Iterator[IO[bytes]]:
    """The build context as an uncompressed tar in a temporary file (see the module)."""
    root = safefs.identity(context)
    left_out = [
        found[1].as_posix()
        for found in (safefs.locate(folder, root) for folder in hidden)
        if found is not None and found[1].parts
    ]
    files = exclude_paths(str(context), _dockerignore(context), dockerfile=dockerfile)
    with tempfile.TemporaryFile() as tar_file:
        with tarfile.open(mode="w", fileobj=tar_file) as t:
            for rel in sorted(files):
                # By path, not as a pattern: a home named `state[1]` is no glob.
                if not any(rel == x or rel.startswith(f"{x}/") for x in left_out):
                    _add(t, context, rel)
        tar_file.seek(0)
        yield tar_file


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    try:
        if stat.S_ISLNK(safefs.lstat(path, context).st_mode):
            # `.dockerignore -> .gitignore`: followed, but only to a file in the context.
            path = Path(os.path.realpath(path))
        text = safefs.read_text(path, context, DOCKERIGNORE_MAX)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise UsageError(f"{context / '.dockerignore'}: {e.strerror}") from None
    return [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]


def _add(t: tarfile.TarFile, context: Path, rel: str) -> None:
    path = context / rel
    st = safefs.lstat(path, context)  # no link followed on the way
    if stat.S_ISREG(st.st_mode):
        with safefs.open_read(path, context) as f:
            info = t.gettarinfo(arcname=rel, fileobj=f)
            t.addfile(info, f)
    elif stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        t.addfile(t.gettarinfo(str(path), arcname=rel))  # a link as a link, not followed
    # FIFOs, devices, sockets: left out
