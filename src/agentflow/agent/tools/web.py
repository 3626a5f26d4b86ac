"""``http_get``: a loopback URL, asked from inside the sandbox (a container has its own
loopback) or, for a sandbox on this machine, from here; redirects reported, not followed."""

from __future__ import annotations

import re
import shlex
import socket
import time
from urllib.parse import urlsplit

from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.schemas import HttpGetArgs
from agentflow.agent.tools.text import BINARY_SNIFF
from agentflow.textsafe import printable

HTTP_TIMEOUT = 3.0
RESPONSE_BYTES = 32 << 10
"""Bytes of an HTTP response read (status, headers, the start of the body)."""
BODY_CHARS = 2000

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_SHOWN_HEADERS = (
    "content-type", "content-length", "location", "server", "retry-after", "www-authenticate",
)  # fmt: skip
_PY_GET = """\
import socket, sys, time
end, data = time.monotonic() + 3, b""
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)
    s.sendall(sys.argv[3].encode())
    while len(data) < 32768 and time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as e:
    if not data:
        sys.exit(str(e.strerror or e))
sys.stdout.buffer.write(data[:32768])
"""
_HTTP_GET = f"""\
if command -v python3 >/dev/null 2>&1; then exec python3 -c {shlex.quote(_PY_GET)} "$@"
elif command -v nc >/dev/null 2>&1; then
  printf '%s' "$3" | nc -w 3 "$1" "$2" 2>&1 | head -c {RESPONSE_BYTES}
else echo "the sandbox has no python3 or nc for an HTTP GET" >&2; exit 127
fi"""


def http_get(scene: Scene, a: HttpGetArgs) -> str:
    """Status, a few headers and the start of the body of a loopback URL's answer."""
    host, port, target = _loopback(a.url)
    request = (
        f"GET {target} HTTP/1.0\r\nHost: {_hostport(host, port)}\r\n"
        "User-Agent: agentflow\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    box = scene.sandbox
    if box is None:
        # No sandbox: no service of the run to ask, and the host's own loopback (other
        # programs' services) is not the model's to look at.
        raise ToolError("there is no sandbox yet (planning before it starts): no service")
    if box.name == "docker":
        # The container has its own loopback (network none): ask from inside it.
        script = f"set -- {shlex.join([host, str(port), request])}\n{_HTTP_GET}"
        # In the workspace, which is there (the step's workdir may not be).
        code, text = box.exec(script, box.workdir(None), HTTP_TIMEOUT + 2)
        if not text.startswith("HTTP/"):
            why = text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
            return f"GET {a.url}: no answer ({why[:300]})"
    else:
        text, why = _fetch(host, port, request)
        if not text:
            return f"GET {a.url}: no answer ({why})"
    return _response(a.url, scene.redact(text))  # masked before the body is cut


def _loopback(url: str) -> tuple[str, int, str]:
    """Host, port and request target of a loopback ``http://`` URL; ToolError for any
    other (a name, another address, user info, a scheme but http)."""
    if len(url) > 2000 or not url.isascii() or not url.isprintable() or " " in url:
        raise ToolError("give a URL of printable ASCII, no spaces, at most 2000 characters")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.netloc:
        raise ToolError(
            f"{url}: only http:// URLs on loopback (http://127.0.0.1:PORT/…, "
            "http://localhost:PORT/…, http://[::1]:PORT/…)"
        )
    if "@" in parts.netloc or parts.hostname not in LOOPBACK:
        raise ToolError(
            f"{url}: only loopback is reachable (127.0.0.1, localhost, [::1]), not "
            f"{parts.hostname or parts.netloc!r}"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ToolError(f"{url}: the port is not a number from 1 to 65535") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, target


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _fetch(host: str, port: int, request: str) -> tuple[str, str]:
    """The start of the response (at most ``RESPONSE_BYTES``, within ``HTTP_TIMEOUT``
    in all), from this machine; or '' and why there was none. HTTP/1.0, raw: no proxy,
    no redirect followed."""
    deadline = time.monotonic() + HTTP_TIMEOUT
    data = bytearray()
    try:
        with socket.create_connection((host, port), timeout=HTTP_TIMEOUT) as s:
            s.sendall(request.encode("ascii"))
            while len(data) < RESPONSE_BYTES and (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        if not data:
            return "", f"no answer within {HTTP_TIMEOUT:g}s"
    except OSError as e:
        if not data:
            return "", str(e.strerror or e)
    return bytes(data[:RESPONSE_BYTES]).decode("utf-8", errors="replace"), ""


def _response(url: str, text: str) -> str:
    """Status, a few headers and the start of the body of a raw HTTP response."""
    head, sep, body = text.partition("\r\n\r\n")
    if not sep:
        head, sep, body = text.partition("\n\n")
    lines = head.splitlines()
    status = lines[0][:200] if lines else "(no status line)"
    shown, others = [], 0
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in _SHOWN_HEADERS:
            shown.append(line[:200])
        else:
            others += 1
    out = [f"GET {url}", status, *shown]
    if others:
        out.append(f"({others} more headers)")
    if re.match(r"HTTP/\S+ 3\d\d", status):
        out.append("(a redirect: not followed)")
    if "\0" in body[:BINARY_SNIFF]:
        out.append(f"\n(a binary body: {len(body)} bytes read)")
    elif body:
        more = (
            f"\n[... {len(body) - BODY_CHARS} more characters read]"
            if len(body) > BODY_CHARS
            else ""
        )
        out.append("\n" + body[:BODY_CHARS] + more)
    else:
        out.append("\n(an empty body)")
    return printable("\n".join(out))
