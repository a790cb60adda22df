"""The structure of a JPEG stream: its size, where it really ends, and how much to reduce it.

``walk_jpeg`` follows the markers the way a decoder does: segments are skipped by their
length (so an EXIF thumbnail's own end marker inside APP1 is never mistaken for the end),
entropy-coded data after each SOS is scanned with one C-speed regex search (``FF00``
stuffing and ``RST0-7`` are data; any other marker starts a new segment, e.g. the next DHT
and SOS of a progressive JPEG), and the stream ends at its EOI marker. Bytes after EOI are
not part of the picture: phones append a video there ("motion photos"), and the picture
is whole. A stream that runs out before EOI is truncated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Start-of-frame markers (C0-CF except DHT C4, JPG C8 and DAC CC) carry the image size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker that ends entropy-coded data
_SOS, _EOI = 0xDA, 0xD9


class JpegStructureError(ValueError):
    """The stream is not a complete JPEG; ``reason`` is "truncated" or "not an image"."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class JpegInfo:
    """``width`` x ``height`` as stored (before EXIF orientation); ``end`` is the offset just
    after the EOI marker; ``progressive`` for multi-scan (SOF2/6/10/14) streams."""

    width: int
    height: int
    end: int
    progressive: bool


def walk_jpeg(data: bytes) -> JpegInfo:
    """Walk the markers of ``data`` (which starts with SOI) to its EOI; raise
    :class:`JpegStructureError` when it has no frame header or runs out before EOI."""
    pos, size, progressive = 2, None, False
    n = len(data)
    while True:
        if pos + 1 >= n or data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF):
            pos = _next_marker(data, pos)  # fill bytes or junk between segments: libjpeg skips them too
        marker = data[pos + 1]
        if marker == _EOI:
            if size is None:
                raise JpegStructureError("not an image", "JPEG has no frame header")
            return JpegInfo(size[0], size[1], pos + 2, progressive)
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            raise JpegStructureError("truncated", "JPEG ends inside a marker")
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > n:
            raise JpegStructureError("truncated", "JPEG ends inside a segment")
        if marker in _SOF and size is None:
            if end - pos < 9:
                raise JpegStructureError("not an image", "JPEG frame header too short")
            size = (int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big"))
            progressive = marker in _PROGRESSIVE
        if marker == _SOS and size is None:
            raise JpegStructureError("not an image", "JPEG scan before its frame header")
        pos = _next_marker(data, end) if marker == _SOS else end


def _next_marker(data: bytes, pos: int) -> int:
    m = _MARKER.search(data, pos)
    if m is None:
        raise JpegStructureError("truncated", "JPEG has no end-of-image marker")
    return m.start()


def reduction(width: int, height: int, *, min_side: int | None = None, max_side: int | None = None) -> int:
    """The largest libjpeg DCT scale denominator (8, 4, 2, else 1) that keeps the needed size.

    libjpeg decodes at ``ceil(side / k)``. ``min_side``: the short side must stay >= it;
    ``max_side``: the long side must stay >= it (the caller area-resizes it down exactly).
    Both use the short/long side only, so EXIF rotations (which swap width and height) give
    the same answer. With neither, nothing is needed at less than full size: 1.
    """
    if min_side is None and max_side is None:
        return 1
    short, long = min(width, height), max(width, height)
    for k in (8, 4, 2):
        if min_side is not None and -(-short // k) < min_side:
            continue
        if max_side is not None and -(-long // k) < max_side:
            continue
        return k
    return 1


#: Bytes inserted before EOI to test whether the last scan was complete (no 0xFF: pure entropy data).
PROBE = bytes((i * 167 + 13) % 255 for i in range(512))


def with_probe(data: bytes, info: JpegInfo) -> bytes:
    """``data`` with :data:`PROBE` inserted just before its EOI marker.

    A complete scan ends before the probe, which libjpeg then skips as extraneous bytes,
    so the picture decodes identically. A scan cut short (a file cut in half, with an EOI
    appended) reads the probe as more blocks and decodes differently."""
    eoi = info.end - 2
    return data[:eoi] + PROBE + data[eoi:]
