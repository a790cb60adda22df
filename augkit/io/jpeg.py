"""The structure of a JPEG stream: its size, where it really ends, and how much to reduce it.

``walk_jpeg`` follows the markers the way a decoder does: segments are skipped by their
length (so an EXIF thumbnail's own end marker inside APP1 is never mistaken for the end),
entropy-coded data after each SOS is scanned with one C-speed regex search (``FF00``
stuffing and ``RST0-7`` are data; any other marker starts a new segment, e.g. the next DHT
and SOS of a progressive JPEG), and the stream ends at its EOI marker. Bytes after EOI are
not part of the picture: phones append a video there ("motion photos"), and the picture
is whole. A stream that runs out before EOI is truncated.

A progressive stream is also truncated when it reaches EOI before its scans have sent every
coefficient of every component to full precision (a scan with successive-approximation low bit
``Al`` = 0 over it): a file cut short with an EOI appended decodes without complaint, but
blurred, from its first scans. libjpeg's encoder refuses a scan script that does not send all
the data (JERR_MISSING_DATA), so a complete file always passes. (A cut inside the very last
scan, which completes the coverage, is not seen by this count.)
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
    final: dict[int, bytearray] = {}  # progressive: component id -> which coefficients reached Al = 0
    scans = 0
    n = len(data)
    while True:
        if pos + 1 >= n or data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF):
            pos = _next_marker(data, pos)  # fill bytes or junk between segments: libjpeg skips them too
        marker = data[pos + 1]
        if marker == _EOI:
            if size is None:
                raise JpegStructureError("not an image", "JPEG has no frame header")
            if progressive:
                _check_coverage(final, scans)
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
            if progressive and end - pos >= 10:
                ids = data[pos + 10 : end : 3][: data[pos + 9]]  # Nf x (Ci, HiVi, Tqi)
                final = {c: bytearray(64) for c in ids}
        if marker == _SOS and size is None:
            raise JpegStructureError("not an image", "JPEG scan before its frame header")
        if marker == _SOS and progressive:
            scans += 1
            _record_scan(data[pos + 4 : end], final)
        pos = _next_marker(data, end) if marker == _SOS else end


def _record_scan(header: bytes, final: dict[int, bytearray]) -> None:
    """Mark the coefficients a progressive scan sends to full precision (its ``Al`` is 0).
    Header: Ns, Ns x (Cs, TdTa), Ss, Se, AhAl."""
    if not header:
        return
    ns = header[0]
    if len(header) < 1 + 2 * ns + 3:
        return
    ss, se, al = header[1 + 2 * ns], header[2 + 2 * ns], header[3 + 2 * ns] & 0x0F
    if al != 0 or ss > se or se > 63:
        return
    for cs in header[1 : 1 + 2 * ns : 2]:
        if cs in final:
            final[cs][ss : se + 1] = b"\x01" * (se - ss + 1)


def _check_coverage(final: dict[int, bytearray], scans: int) -> None:
    missing = {c: 64 - sum(done) for c, done in final.items() if not all(done)}
    if missing:
        lacking = ", ".join(f"component {c}: {k} of 64" for c, k in missing.items())
        raise JpegStructureError(
            "truncated",
            f"progressive JPEG ends after {scans} scan(s) before every coefficient is complete ({lacking} "
            "missing): it would decode blurred",
        )


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
