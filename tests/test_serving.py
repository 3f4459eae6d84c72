"""The HTTP server `cds serve` runs (cds/serving.py): waitress, whose main thread
leaves a connection's response to the worker that is writing it."""
import hashlib
import http.client
import socket
import threading
import time

import pytest
from flask import Flask, Response

from cds.serving import Channel, create_server
from tests.conftest import free_port


def _serve(app, **options):
    port = free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=4, **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, port


def _tiny_app():
    app = Flask(__name__)
    app.add_url_rule("/n/<int:n>", "n", lambda n: {"n": n})

    def stream(size):
        chunk = bytes(range(256)) * 256  # 64 KiB
        def body():
            for _ in range(size // len(chunk)):
                yield chunk
        return Response(body(), mimetype="application/octet-stream")
    app.add_url_rule("/stream/<int:size>", "stream", stream)
    return app


def test_the_main_thread_leaves_a_running_answer_to_its_worker():
    server, port = _serve(_tiny_app())
    try:
        with socket.create_connection(("127.0.0.1", port)):
            deadline = time.monotonic() + 5
            while not [c for c in list(server._map.values()) if isinstance(c, Channel)]:
                assert time.monotonic() < deadline, "the connection was not accepted"
                time.sleep(0.01)
            channel = next(c for c in list(server._map.values()) if isinstance(c, Channel))
            assert not channel.writable()  # nothing to send
            with channel.outbuf_lock:
                channel.requests.append(object())  # a worker is answering
                channel.outbufs[-1].append(b"x" * 100)
                channel.total_outbufs_len += 100
                # waitress's own connection would call itself writable here, and its main
                # thread would spin until the worker let go of the buffer.
                assert not channel.writable()
                # Past the high-water mark the worker waits for the main thread: it sends.
                channel.total_outbufs_len = channel.adj.outbuf_high_watermark + 1
                assert channel.writable()
                channel.total_outbufs_len = 100
                channel.requests.pop()
                # The worker is done: what it left is the main thread's to send.
                assert channel.writable()
                channel.outbufs[-1].skip(100, True)
                channel.total_outbufs_len = 0
    finally:
        server.close()


def test_many_keep_alive_clients_all_get_their_own_answers():
    server, port = _serve(_tiny_app())
    wrong, errors = [], []

    def client(k):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            for i in range(60):
                n = k * 1000 + i
                conn.request("GET", f"/n/{n}")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or body.strip() != f'{{"n":{n}}}'.encode():
                    wrong.append((n, resp.status, body))
            conn.close()
        except Exception as exc:  # reported below
            errors.append(exc)
    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not wrong
    finally:
        server.close()


@pytest.mark.parametrize("slow", [False, True])
def test_an_answer_larger_than_the_high_water_mark_reaches_a_slow_reader_whole(slow):
    # The worker writes 4 MiB into a 256 KiB high-water mark: it must wait for the main
    # thread to drain the buffer, which the main thread still does.
    server, port = _serve(_tiny_app(), outbuf_high_watermark=256 * 1024)
    size = 4 * 1024 * 1024
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/stream/{size}")
        resp = conn.getresponse()
        digest, got = hashlib.sha256(), 0
        while chunk := resp.read(16 * 1024):
            if slow and got < 1024 * 1024:
                time.sleep(0.002)
            digest.update(chunk)
            got += len(chunk)
        assert resp.status == 200 and got == size
        assert digest.hexdigest() == hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).hexdigest()
        conn.close()
    finally:
        server.close()
