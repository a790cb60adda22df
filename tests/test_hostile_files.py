"""Hostile inputs at the file level: no hang, no runaway read or
allocation, errors that survive a process boundary, temp names that always fit."""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import os
import pickle
import signal
import socket

import cv2
import numpy as np
import pytest
from _imgs import photo, write
from PIL import Image

import augkit.errors as errors
from augkit.errors import ImageError
from augkit.io.fileio import atomic_write_bytes, is_temp_name, read_bytes
from augkit.io.images import (
    MAX_ASPECT,
    check_image_bytes,
    check_image_file,
    encode_image,
    max_bytes_for,
    read_image,
    write_image,
)
from augkit.io.preprocess import eval_image, resize_short


@contextlib.contextmanager
def deadline(seconds: int = 5):
    """Fail (instead of hanging the suite) when the body blocks, e.g. opening a FIFO."""

    def expire(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Paths handed to os.open."""
    seen: list[str] = []
    real = os.open

    def spy(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return seen


def special_files(tmp_path) -> dict[str, str]:
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "link_to_fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    sock = tmp_path / "s.jpg"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    server.close()  # the socket file stays
    return {
        "fifo": str(fifo),
        "link": str(tmp_path / "link_to_fifo.jpg"),
        "zero": str(tmp_path / "zero.jpg"),
        "socket": str(sock),
        "device": "/dev/null",
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and sockets")
def test_special_files_are_refused_without_being_opened(tmp_path, opened):
    for kind, path in special_files(tmp_path).items():
        with deadline(), pytest.raises(ImageError) as e:
            read_image(path)
        assert e.value.reason == "not a regular file", kind
        assert e.value.path == path
        with deadline(), pytest.raises(ImageError, match="not a regular file"):
            check_image_file(path)
    assert opened == []


def test_a_file_over_max_bytes_is_refused_before_reading(tmp_path, monkeypatch):
    p = write(tmp_path / "x.png", photo())
    size = p.stat().st_size
    assert read_bytes(p, max_bytes=size) == p.read_bytes()
    reads = []
    monkeypatch.setattr(os, "read", lambda *a: reads.append(a))
    with pytest.raises(ImageError) as e:
        read_bytes(p, max_bytes=size - 1)
    assert e.value.reason == "too large" and f"{size:,} bytes" in e.value.detail
    assert reads == []


def test_read_image_bounds_bytes_by_the_pixel_limit(tmp_path, monkeypatch):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as fh:  # a sparse file: takes no disk space
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(max_bytes_for(1000) + 1)
    reads = []
    monkeypatch.setattr(os, "read", lambda *a: reads.append(a))
    with pytest.raises(ImageError) as e:
        read_image(huge, max_pixels=1000)
    assert e.value.reason == "too large" and reads == []
    assert max_bytes_for(100) >= 8 * 100 and max_bytes_for(None) is None


def test_a_read_stops_at_max_bytes_plus_one_even_when_stat_lies(monkeypatch):
    path = "/proc/self/maps"  # a regular file whose stat size (0) is a lie
    if not os.path.exists(path):
        pytest.skip("needs procfs")
    got = []
    real = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: got.append(real(fd, n)) or got[-1])
    with pytest.raises(ImageError) as e:
        read_bytes(path, max_bytes=100)
    assert e.value.reason == "too large"
    assert sum(map(len, got)) == 101


def tall_strip(fmt: str, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, height), 200).save(buf, fmt, **({"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt,height", [("PNG", 999_999), ("TIFF", 3_000_000)])
def test_extreme_aspect_ratio_is_refused_from_the_header(tmp_path, monkeypatch, fmt, height):
    data = tall_strip(fmt, height)
    assert len(data) < 100_000  # a few KB on disk...
    p = tmp_path / f"strip.{fmt.lower()}"
    p.write_bytes(data)
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a))
    for check in (read_image, check_image_file):
        with pytest.raises(ImageError) as e:
            check(p)
        assert e.value.reason == "bad dimensions" and f"1x{height}" in e.value.detail
    assert calls == []  # ...refused before any pixel was decoded


def test_aspect_limit_allows_wide_panoramas(tmp_path):
    p = write(tmp_path / "pano.png", np.zeros((3, 3 * MAX_ASPECT, 3), np.uint8))
    assert read_image(p).shape == (3, 3 * MAX_ASPECT, 3)
    check_image_bytes(p.read_bytes(), p)
    p = write(tmp_path / "too.png", np.zeros((3, 3 * MAX_ASPECT + 1, 3), np.uint8))
    with pytest.raises(ImageError, match="bad dimensions"):
        read_image(p)


def test_resize_short_never_builds_an_absurd_image():
    with pytest.raises(ImageError) as e:
        resize_short(np.zeros((1, 999_999, 3), np.uint8), 32, path="strip.png")
    assert e.value.reason == "bad dimensions" and e.value.path == "strip.png"
    with pytest.raises(ImageError, match="would give"):
        eval_image(photo(size=(64, 48)), 100_000)  # a checkpoint's absurd image_size
    assert resize_short(photo(size=(64, 48)), 24).shape == (24, 32, 3)


def error_samples() -> dict[type, Exception]:
    """One instance of every exception class in augkit.errors, with every field set."""
    return {
        errors.AugkitError: errors.AugkitError("disk full"),
        errors.UsageError: errors.UsageError("bad option"),
        errors.RecipeError: errors.RecipeError("unknown op", source="r.yaml", where="step 2", line=7, allowed="flip"),
        errors.ImageError: ImageError("a/x.jpg", "truncated", "JPEG has no end-of-image marker"),
    }


def test_every_error_class_survives_pickle():
    classes = {
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == errors.__name__
    }
    samples = error_samples()
    assert classes == set(samples)  # a new error class needs a sample here
    for cls, exc in samples.items():
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and str(back) == str(exc) and vars(back) == vars(exc)
    back = pickle.loads(pickle.dumps(samples[ImageError]))
    assert (back.path, back.reason, back.detail) == ("a/x.jpg", "truncated", "JPEG has no end-of-image marker")


@pytest.mark.parametrize(
    "name", ["a" * 246 + ".jpg", "é" * 123 + ".jpg", "😺" * 61 + "xy.jpg"], ids=["ascii", "2-byte", "4-byte"]
)
def test_temp_names_fit_255_bytes(tmp_path, monkeypatch, name):
    assert len(os.fsencode(name)) >= 250
    temps = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: temps.append(os.path.basename(src)) or real(src, dst))
    atomic_write_bytes(tmp_path / name, b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    assert len(os.fsencode(temps[0])) <= 255 and is_temp_name(temps[0])
    temps[0].encode("utf-8")  # cut on a character boundary: still valid UTF-8
    assert sorted(os.listdir(tmp_path)) == [name]


def test_is_temp_name_knows_only_temp_files():
    assert is_temp_name(".x.jpg.0123abcd.tmp")
    for name in ("x.jpg", ".x.jpg", ".x.jpg.tmp", "x.jpg.0123abcd.tmp", ".x.jpg.0123ABCD.tmp"):
        assert not is_temp_name(name), name


def test_an_output_name_over_255_bytes_fails_before_writing(tmp_path):
    with pytest.raises(OSError) as e:
        atomic_write_bytes(tmp_path / ("a" * 252 + ".jpg"), b"data")
    assert e.value.errno == errno.ENAMETOOLONG
    assert os.listdir(tmp_path) == []


def test_an_image_that_cannot_be_encoded_names_the_file(tmp_path):
    with pytest.raises(ImageError) as e:
        write_image(np.zeros((2, 20_000, 3), np.uint8), tmp_path / "strip.webp")  # WebP stops at 16383
    assert e.value.reason == "encode failed" and e.value.path == str(tmp_path / "strip.webp")
    assert "20000x2" in e.value.detail and os.listdir(tmp_path) == []
    with pytest.raises(ImageError, match="encode failed"):
        encode_image(np.zeros((1, 70_000, 3), np.uint8), ".jpg")
