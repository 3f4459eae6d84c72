"""QR codes of deployment links, as small PNG images.

qrcode's defaults search for the smallest symbol version and score all eight
mask patterns, which costs several milliseconds per code. Every link of an
installation has the same length, so the version is computed once per length,
and a fixed mask pattern is used: both are valid QR codes that any reader
decodes, made several times faster. A bulk run draws its codes as flips of one
code (``_LinearCode``), and the PNG is written here, not by Pillow.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import struct
import threading
import zlib
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
    data = text.encode("utf-8")
    return _png(_modules(data), _size(len(data)), module_pixels)


def bulk_qr_png(text: str) -> bytes:
    """``qr_png`` for one of many links: the same image, drawn as ``_LinearCode`` does.
    The first few hundred codes of a process pay for the rest."""
    data = text.encode("utf-8")
    code = _linear_codes.get(len(data))
    if code is None:
        if len(_linear_codes) >= 32:
            _linear_codes.clear()
        code = _linear_codes[len(data)] = _LinearCode(data)
    return _png(code.modules(data), _size(len(data)), MODULE_PIXELS)


def _size(length: int) -> int:
    """Modules per side, border included, of the code of a text of ``length`` bytes."""
    return 17 + 4 * _version_for_length(length) + 2 * BORDER_MODULES


def _modules(data: bytes) -> int:
    """``qr_matrix`` as one integer: bit ``r * size + c``, counted from the top, is module (r, c)."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M
    code = qrcode.QRCode(version=_version_for_length(len(data)), error_correction=ERROR_CORRECT_M,
                         mask_pattern=MASK_PATTERN, border=BORDER_MODULES)
    code.add_data(data, optimize=0)
    code.make(fit=False)
    return int("".join("1" if dark else "0" for row in code.get_matrix() for dark in row), 2)


class _LinearCode:
    """QR codes of many texts of one length, without encoding each anew.

    With the version, error correction level and mask fixed (see above), a QR code
    is an affine function of its data bits: the error correction codewords are
    Reed-Solomon, linear over GF(256) and so over GF(2) as well; interleaving and
    placing the codewords is a permutation, the mask a fixed XOR, and everything else
    (mode, length, padding, finder and timing patterns, format information) is the
    same for every text of this length. So the code of a text is the code of another
    text of that length with the modules flipped that each differing data bit flips.
    The flips of a bit are found once, by encoding the base text with that bit
    changed; links differ only in their tokens, so a run needs a few hundred, and
    each code then costs some XORs of integers instead of an encoding (about 1 ms)."""

    def __init__(self, base: bytes):
        self.base = base
        self.base_modules = _modules(base)
        self._flips: dict[tuple[int, int], int] = {}

    def modules(self, data: bytes) -> int:
        bits = self.base_modules
        for i, (a, b) in enumerate(zip(data, self.base)):
            diff = a ^ b
            while diff:
                bit = diff & -diff
                flip = self._flips.get((i, bit))
                if flip is None:
                    probe = bytearray(self.base)
                    probe[i] ^= bit
                    flip = self._flips[(i, bit)] = _modules(bytes(probe)) ^ self.base_modules
                bits ^= flip
                diff ^= bit
        return bits


_linear_codes: dict[int, _LinearCode] = {}

@lru_cache(maxsize=4)
def _expansion(module_pixels: int) -> tuple[int, ...]:
    """8 modules (a byte, the leftmost its top bit) as 8 * module_pixels pixel bits.
    A dark module is black, a 0 in a 1-bit greyscale PNG."""
    return tuple(int("".join(("0" if v >> (7 - k) & 1 else "1") * module_pixels for k in range(8)), 2)
                 for v in range(256))


def _png(modules: int, size: int, module_pixels: int = MODULE_PIXELS) -> bytes:
    """A 1-bit greyscale PNG of the modules, each ``module_pixels`` square: the pixels
    Pillow drew from the same matrix (tests/mail/test_mail.py compares them), written directly."""
    table, step = _expansion(module_pixels), 8 * module_pixels
    width = size * module_pixels
    row_bytes = (width + 7) // 8
    pad = row_bytes * 8 - width
    groups, rest = divmod(size, 8)
    row_mask = (1 << size) - 1
    rows = []
    for r in range(size):
        row = modules >> ((size - 1 - r) * size) & row_mask
        line = 0
        for g in range(groups):
            line = line << step | table[row >> (size - 8 * (g + 1)) & 255]
        if rest:
            last = table[(row & ((1 << rest) - 1)) << (8 - rest)] >> ((8 - rest) * module_pixels)
            line = line << (rest * module_pixels) | last
        # Filter type 0 (none) before each scanline; a row of modules is module_pixels scanlines.
        rows.append((b"\x00" + (line << pad).to_bytes(row_bytes, "big")) * module_pixels)
    header = struct.pack(">IIBBBBB", width, width, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"".join((b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header),
                     _chunk(b"IDAT", zlib.compress(b"".join(rows))), _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


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
                ctx.set_forkserver_preload(["qrcode", "cds.mail.qr"])
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
        return pool.map(bulk_qr_png, texts, chunksize=10)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None
