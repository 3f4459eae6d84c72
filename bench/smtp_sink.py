"""A counting SMTP sink for the deploy benchmark, run in its own process:

    .venv/bin/python bench/smtp_sink.py PORT [FIRST_MESSAGE_FILE]

Accepts every message and keeps none (but the first, written to FIRST_MESSAGE_FILE if
given); prints the count, the bytes received and its CPU time when stopped (SIGTERM)."""
from __future__ import annotations

import signal
import sys
import threading
import time

from aiosmtpd.controller import Controller


class Counter:
    def __init__(self, first_file: str | None = None):
        self.count = self.size = 0
        self.first_file = first_file

    async def handle_DATA(self, server, session, envelope):
        if self.count == 0 and self.first_file:
            with open(self.first_file, "wb") as fh:
                fh.write(envelope.original_content)
        self.count += 1
        self.size += len(envelope.original_content)
        return "250 OK"


def main() -> None:
    port = int(sys.argv[1])
    handler = Counter(sys.argv[2] if len(sys.argv) > 2 else None)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    controller.stop()
    print(f"received {handler.count} bytes {handler.size} cpu {time.process_time():.2f}", flush=True)


if __name__ == "__main__":
    main()
