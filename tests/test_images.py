"""The decode policy and folder scanning: every bad input of reliability.md rows 1-11."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from _imgs import class_folder, photo, write
from PIL import Image

from augkit.errors import ImageError
from augkit.io.fileio import atomic_write_bytes
from augkit.io.images import check_image_bytes, decode_image, read_image, write_image
from augkit.io.scan import scan_folder


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
    (tmp_path / "__pycache__").mkdir()  # Python leaves one beside a script in the data folder
    (tmp_path / "__pycache__" / "make.cpython-311.pyc").write_bytes(b"x")
    write(tmp_path / "a" / "sub" / "a9.png", photo())
    (tmp_path / "empty").mkdir()
    s = scan_folder(tmp_path)
    assert s.classes == ["a", "b"]  # never a class: .ipynb_checkpoints, __pycache__, empty
    assert s.empty_classes == ["empty"]
    assert [r for r, _ in s.items] == ["a/a0.jpg", "a/a1.png", "a/sub/a9.png", "b/b0.jpg", "b/b1.png"]
    assert {"a/.DS_Store", "a/Thumbs.db", "a/._a0.jpg", "a/notes.txt"} <= set(s.ignored)


def test_scan_survives_symlink_loop_and_flat_folder(tmp_path):
    write(tmp_path / "x.png", photo())
    os.symlink(tmp_path, tmp_path / "loop")
    s = scan_folder(tmp_path)
    assert [r for r, _ in s.items] == ["x.png"] and s.flat


# ---------------------------------------------------------------- where a JPEG ends


def fake_video() -> bytes:
    """What a phone appends after a motion photo's JPEG: an MP4 (here its box header and noise,
    with JPEG-like markers inside to show they are not mistaken for the picture's end)."""
    rng = np.random.default_rng(0)
    return b"\x00\x00\x00\x18ftypmp42" + b"\xff\xd8\xff\xd9" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("progressive", [False, True])
def test_data_after_the_jpeg_end_is_ignored(tmp_path, progressive):
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut", (320, 240))).save(buf, "JPEG", quality=90, progressive=progressive)
    p = tmp_path / "motion.jpg"
    p.write_bytes(buf.getvalue() + fake_video())
    plain = decode_image(buf.getvalue())
    assert np.array_equal(read_image(p), plain)
    assert np.array_equal(read_image(p, min_side=100), decode_image(buf.getvalue(), min_side=100))
    check_image_bytes(p.read_bytes(), p)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_a_jpeg_cut_short_with_an_end_marker_appended_is_truncated(tmp_path, fraction):
    data = jpeg_bytes(photo("astronaut", (320, 240)))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * fraction)] + b"\xff\xd9")
    for kwargs in ({}, {"min_side": 32}, {"max_side": 50}):
        with pytest.raises(ImageError) as e:
            read_image(p, **kwargs)
        assert e.value.reason == "truncated"


def test_a_jpeg_without_end_marker_is_truncated_by_the_header_check(tmp_path):
    data = jpeg_bytes(photo("astronaut", (320, 240)))
    with pytest.raises(ImageError) as e:
        check_image_bytes(data[: len(data) * 2 // 3], "cut.jpg")
    assert e.value.reason == "truncated" and e.value.path == "cut.jpg"


def test_a_real_grey_corner_is_not_mistaken_for_a_cut(tmp_path):
    img = photo("astronaut", (320, 240))
    img[-32:] = 128  # a flat grey band (exactly 128) at the bottom, aligned to whole blocks
    img[:, -32:] = 128
    data = jpeg_bytes(img, quality=95)
    out = decode_image(data)
    assert (out[-1, -1] == 128).all()  # precondition: the corner decodes exactly as libjpeg's fill
    assert np.abs(out.astype(int) - img).mean() < 4
    assert decode_image(data, max_side=80).shape == (60, 80, 3)


def test_segments_are_skipped_by_length_not_searched_for_markers(tmp_path):
    """An EXIF thumbnail inside APP1 has its own end marker: a file cut right after it is truncated."""
    thumb = jpeg_bytes(photo(size=(16, 12)))
    main = jpeg_bytes(photo("astronaut", (320, 240)))
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    whole = main[:2] + app1 + main[2:]
    assert np.array_equal(decode_image(whole), decode_image(main))
    cut = whole[: 2 + len(app1)]
    assert cut.endswith(b"\xff\xd9")  # the old "ends with FFD9" test would have let it through
    with pytest.raises(ImageError) as e:
        decode_image(cut)
    assert e.value.reason == "truncated"
