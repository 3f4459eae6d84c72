"""QR codes of deployment links, as small PNG images.

qrcode's defaults search for the smallest symbol version and score all eight
mask patterns, which costs several milliseconds per code. Every link of an
installation has the same length, so the version is computed once per length,
and a fixed mask pattern is used: both are valid QR codes that any reader
decodes, made several times faster.
"""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from typing import Iterator

log = logging.getLogger("cds.mail")

MASK_PATTERN = 2
MODULE_PIXELS = 6
BORDER_MODULES = 4


# qrcode and Pillow are imported on first use: the console's idle memory stays small.

@lru_cache(maxsize=32)
def _version_for_length(length: int) -> int:
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M
    probe = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=BORDER_MODULES)
    probe.add_data("x" * length, optimize=0)
    return probe.best_fit()


def qr_matrix(text: str) -> list[list[bool]]:
    """The modules of the code, border included (True = dark)."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M
    data = text.encode("utf-8")
    code = qrcode.QRCode(version=_version_for_length(len(data)), error_correction=ERROR_CORRECT_M,
                         mask_pattern=MASK_PATTERN, border=BORDER_MODULES)
    # optimize=0: one byte-mode segment, so the length alone decides the version.
    code.add_data(data, optimize=0)
    code.make(fit=False)
    return code.get_matrix()


def qr_png(text: str, module_pixels: int = MODULE_PIXELS) -> bytes:
    """A black-on-white PNG of the QR code of ``text``."""
    from PIL import Image
    matrix = qr_matrix(text)
    size = len(matrix)
    pixels = b"".join(bytes(0 if dark else 255 for dark in row) for row in matrix)
    image = Image.frombytes("L", (size, size), pixels)
    image = image.resize((size * module_pixels, size * module_pixels), Image.NEAREST).convert("1")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# Below this many codes a worker process costs more than it saves.
POOL_MIN_CODES = 50


def _end_with_server(lifeline) -> None:
    """Runs in each worker process: the worker ends as soon as the server process is
    gone, however it ended (a normal stop, SIGTERM, SIGINT, kill -9). The server holds
    the only write end of the lifeline pipe; the kernel closes it when the server
    dies, and the read below returns."""
    def watch():
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(0)
    threading.Thread(target=watch, name="cds-qr-lifeline", daemon=True).start()


class QrMaker:
    """QR codes for a bulk run. Large runs draw them in a worker process, so one
    core draws codes while the other composes and sends the messages. The workers
    end with the pool, and with the server if it dies first (``_end_with_server``)."""

    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None
        self._pool_failed = False
        self._lifeline = None

    def _executor(self) -> ProcessPoolExecutor | None:
        if self._pool is None and not self._pool_failed:
            try:
                # forkserver: a clean process to fork from, never a copy of this
                # multi-threaded server with its open database connections.
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["qrcode", "PIL.Image", "cds.mail.qr"])
                workers = max(1, min(3, (os.cpu_count() or 2) - 1))
                # Workers start when first needed, so both ends stay open here until close().
                self._lifeline = ctx.Pipe(duplex=False)
                self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                 initializer=_end_with_server,
                                                 initargs=(self._lifeline[0],))
            except (OSError, ValueError) as exc:
                log.warning("QR codes are drawn in this process: no worker process (%s)", exc)
                self._pool_failed = True
        return self._pool

    def pngs(self, texts: list[str]) -> Iterator[bytes]:
        """The PNGs of ``texts``, in order, as they become ready."""
        pool = self._executor() if len(texts) >= POOL_MIN_CODES else None
        if pool is None:
            return map(qr_png, texts)
        return pool.map(qr_png, texts, chunksize=10)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None
