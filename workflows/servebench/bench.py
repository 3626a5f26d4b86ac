"""The load test of workflows/servebench.yaml: ``CLIENTS`` threads send requests to ``URL``
for ``SECONDS`` and print ``rps=N``. Every answer must name this run: an answer from
another run's server (two runs on one port) fails the step."""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.request

URL = os.environ["URL"]
CLIENTS = int(os.environ.get("CLIENTS", "4"))
SECONDS = float(os.environ.get("SECONDS", "1.5"))
RUN_ID = os.environ["AGENTFLOW_RUN_ID"]


def main() -> int:
    done = [0] * CLIENTS
    strangers: set[str] = set()
    end = time.monotonic() + SECONDS

    def client(i: int) -> None:
        while time.monotonic() < end:
            with urllib.request.urlopen(URL + "/work", timeout=5) as answer:
                who = answer.read().decode()
            if who != RUN_ID:
                strangers.add(who)
            done[i] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if strangers:
        print(f"answered by another run's server: {', '.join(sorted(strangers))}")
        return 1
    print(f"requests={sum(done)} seconds={elapsed:.2f} served_by={RUN_ID}")
    print(f"rps={sum(done) / elapsed:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
