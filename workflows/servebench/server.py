"""A tiny HTTP service for workflows/servebench.yaml: ``/health`` answers at once; every
other path waits ``DELAY_MS`` (a model's forward pass, say) and answers with the id of the
run that started it, so a client can tell whose server it reached."""

from __future__ import annotations

import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUN_ID = os.environ.get("AGENTFLOW_RUN_ID", "?").encode()
DELAY = float(os.environ.get("DELAY_MS", "0")) / 1000


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/health":
            time.sleep(DELAY)
        self.send_response(200)
        self.send_header("Content-Length", str(len(RUN_ID)))
        self.end_headers()
        self.wfile.write(RUN_ID)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line a request would drown the step's log


def main() -> None:
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serving run {RUN_ID.decode()} on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
