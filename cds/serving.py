"""The HTTP server `cds serve` runs: waitress, with one change to its connections.

waitress answers from a pool of worker threads while one main thread waits on the
sockets. A connection counts as "writable" to that main thread whenever its response
buffer holds bytes, even while a worker is still writing into it and sending it
itself (it holds the buffer's lock). The main thread then finds the lock taken,
returns to its socket wait, which answers at once because the socket is writable,
and so on: it spins, holding the interpreter lock that the very worker it waits for
needs to finish. Measured under client load (8 connections, 8 threads): 27 such
turns per request, and a fifth to a third of the CPU a client activation costs.

Here a connection whose worker is still running leaves its buffer to that worker
(which sends as it writes), unless the buffer has grown past waitress's high-water
mark: a worker waits for the main thread to drain the buffer only then, so the main
thread still does at that point. What is left when the worker finishes is sent by
the main thread as before.
"""
from __future__ import annotations

import waitress
from waitress.channel import HTTPChannel


class Channel(HTTPChannel):
    """waitress's connection, without the main thread's spin described above."""

    def writable(self):
        if self.requests and self.total_outbufs_len <= self.adj.outbuf_high_watermark:
            # A worker is answering: it sends what it writes (or waits for the main
            # thread only above the high-water mark, see above).
            return bool(self.will_close or self.close_when_flushed)
        return super().writable()


def create_server(app, **options):
    """A waitress server for ``app`` (waitress's options), its connections ``Channel``."""
    server = waitress.create_server(app, **options)
    # One listening socket (a server) or several (their dispatcher, holding each).
    listeners = [server] if hasattr(server, "channel_class") else \
        [s for s in server.map.values() if hasattr(s, "channel_class")]
    for listener in listeners:
        listener.channel_class = Channel
    return server
