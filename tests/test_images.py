"""The decode policy and folder scanning: every bad input of reliability.md rows 1-11."""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from augkit.errors import ImageError
from augkit.images import atomic_write_bytes, decode_image, read_image, scan_folder, write_image
from _imgs import class_folder, photo, write


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def test_reads_rgb_in_rgb_order(tmp_path):
    img = np.zeros((8, 10, 3), np.uint8)
    img[..., 0] = 200  # red
    p = write(tmp_path / "red.png", img)
    out = read_image(p)
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "gone.jpg")
    assert e.value.reason == "not found"


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    p = write(tmp_path / "x.png", photo())

    real_open = os.open

    def deny(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(p):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)  # root ignores chmod 000, so simulate the OS error
    with pytest.raises(ImageError) as e:
        read_image(p)
    assert e.value.reason == "permission denied"


def test_truncated_jpeg_is_rejected_not_half_grey(tmp_path):
    data = jpeg_bytes(photo(size=(128, 96)))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        read_image(p)
    assert e.value.reason == "truncated"


def test_truncated_png_is_rejected(tmp_path):
    ok, buf = cv2.imencode(".png", photo(size=(128, 96)))
    p = tmp_path / "cut.png"
    p.write_bytes(buf.tobytes()[:300])
    with pytest.raises(ImageError) as e:
        read_image(p)
    assert e.value.reason in ("truncated", "not an image")


@pytest.mark.parametrize("payload", [b"", os.urandom(2048), b"hello, I am text\n" * 20])
def test_not_an_image(tmp_path, payload):
    p = tmp_path / "fake.jpg"
    p.write_bytes(payload)
    with pytest.raises(ImageError) as e:
        read_image(p)
    assert e.value.reason == "not an image"


def test_png_named_jpg_decodes_by_content(tmp_path):
    img = photo()
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    p = tmp_path / "actually_png.jpg"
    p.write_bytes(buf.tobytes())
    assert np.array_equal(read_image(p), img)  # lossless: exact pixels


@pytest.mark.parametrize("orientation,rotated", [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_is_applied(tmp_path, orientation, rotated):
    img = photo(size=(64, 32))  # wide
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.jpg"
    pil.save(p, exif=exif, quality=95)
    out = read_image(p)
    assert out.shape[:2] == ((64, 32) if rotated else (32, 64))
    if orientation == 3:  # 180 degrees: the top-left of the output is the bottom-right of the stored image
        assert np.abs(out[:4, :4].astype(int).mean() - img[-4:, -4:].astype(int).mean()) < 25


def test_grayscale_palette_rgba_and_16bit_become_rgb_uint8(tmp_path):
    gray = (np.arange(48 * 64) % 256).astype(np.uint8).reshape(48, 64)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (48, 64, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)

    Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red...
    rgba[:5, :, 3] = 255  # ...opaque in the top half, transparent below
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert (out[:5] == [255, 0, 0]).all()  # opaque: the color
    assert (out[5:] == [255, 255, 255]).all()  # transparent: white (documented policy)

    deep = np.full((6, 6), 65535, np.uint16)
    deep[:3] = 257 * 100
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and (out[3:] == 255).all() and (out[:3] == 100).all()


def test_huge_dimensions_rejected_from_header(tmp_path, monkeypatch):
    p = write(tmp_path / "big.png", photo(size=(200, 100)))
    with pytest.raises(ImageError) as e:
        read_image(p, max_pixels=10_000)
    assert e.value.reason == "too large" and "20,000" in e.value.detail

    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a))
    with pytest.raises(ImageError):
        read_image(p, max_pixels=10_000)
    assert calls == []  # rejected before any pixel was decoded


def test_non_ascii_names_round_trip(tmp_path):
    img = photo()
    for name in ("кошка.png", "emoji 😺 cat.png", "with space.png"):
        write_image(img, tmp_path / name)
        assert np.array_equal(read_image(tmp_path / name), img)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.jpg"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"  # the old file, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]  # no temp left behind


def test_scan_ignores_litter_and_keeps_imagefolder_order(tmp_path):
    class_folder(tmp_path, per_class=2, classes=("b", "a"))
    (tmp_path / "a" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "a" / "._a0.jpg").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / ".ipynb_checkpoints" / "c").mkdir(parents=True)
    write(tmp_path / ".ipynb_checkpoints" / "c" / "x.png", photo())
    write(tmp_path / "a" / "sub" / "a9.png", photo())
    (tmp_path / "empty").mkdir()
    s = scan_folder(tmp_path)
    assert s.classes == ["a", "b"]  # never a class: .ipynb_checkpoints, empty
    assert s.empty_classes == ["empty"]
    assert [r for r, _ in s.items] == ["a/a0.jpg", "a/a1.png", "a/sub/a9.png", "b/b0.jpg", "b/b1.png"]
    assert {"a/.DS_Store", "a/Thumbs.db", "a/._a0.jpg", "a/notes.txt"} <= set(s.ignored)


def test_scan_survives_symlink_loop_and_flat_folder(tmp_path):
    write(tmp_path / "x.png", photo())
    os.symlink(tmp_path, tmp_path / "loop")
    s = scan_folder(tmp_path)
    assert [r for r, _ in s.items] == ["x.png"] and s.flat
