"""A counting SMTP sink for the deploy benchmark, run in its own process:

    .venv/bin/python bench/smtp_sink.py PORT

Accepts every message, keeps nothing, prints the count and its CPU time when stopped (SIGTERM)."""
from __future__ import annotations

import signal
import sys
import threading
import time

from aiosmtpd.controller import Controller


class Counter:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 OK"


def main() -> None:
    port = int(sys.argv[1])
    handler = Counter()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    controller.stop()
    print(f"received {handler.count} cpu {time.process_time():.2f}", flush=True)


if __name__ == "__main__":
    main()
