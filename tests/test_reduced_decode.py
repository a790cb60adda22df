"""Decode policy v2: JPEGs decoded at the size that is needed (libjpeg DCT scaling), issue 8."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from _imgs import photo
from PIL import Image

from augkit.errors import ImageError, UsageError
from augkit.io.images import DECODE_POLICY, decode_image, decode_policy_reduces, read_image
from augkit.io.jpeg import reduction


def camera_jpeg(size=(2000, 1500), orientation: int | None = None, name: str = "astronaut") -> bytes:
    """A real photo (scikit-image, public domain) saved as a large JPEG, optionally with EXIF orientation."""
    pil = Image.fromarray(photo(name, size))
    kwargs = {}
    if orientation is not None:
        exif = pil.getexif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


def area(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def decode_flags(monkeypatch) -> list[int]:
    """Record the flags every cv2.imdecode call gets."""
    seen: list[int] = []
    real = cv2.imdecode

    def spy(buf, flags):
        seen.append(flags)
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return seen


def test_min_side_decodes_at_the_largest_reduction_that_keeps_the_short_side(monkeypatch):
    data = camera_jpeg((2000, 1500))
    full = decode_image(data)
    flags = decode_flags(monkeypatch)
    small = decode_image(data, min_side=200)  # 1/8 would give 188 < 200: 1/4 it is
    assert flags == [cv2.IMREAD_REDUCED_COLOR_4]
    assert small.shape == (375, 500, 3) and small.dtype == np.uint8
    assert mean_abs_diff(small, area(full, small.shape[:2])) < 3.0
    assert decode_image(data, min_side=100).shape == (188, 250, 3)  # ceil(1500/8): libjpeg rounds up
    assert decode_image(data, min_side=1500).shape == full.shape  # nothing to spare: full size


@pytest.mark.parametrize("size", [(2000, 1500), (1203, 1701)])
def test_max_side_reduced_equals_full_decode_plus_the_same_area_resize(size):
    data = camera_jpeg(size)
    full = decode_image(data)
    reduced = decode_image(data, max_side=300)
    plain = decode_image(data, max_side=300, reduced=False)
    w, h = size
    assert plain.shape[:2] == ((round(h * 300 / w), 300) if w >= h else (300, round(w * 300 / h)))
    assert reduced.shape == plain.shape
    assert np.array_equal(plain, area(full, plain.shape[:2]))  # reduced=False: full decode, then INTER_AREA
    assert mean_abs_diff(reduced, plain) < 3.0


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_is_kept_on_the_reduced_path(orientation, monkeypatch):
    data = camera_jpeg((1600, 800), orientation=orientation)  # stored wide, shown tall
    full = decode_image(data)
    assert full.shape == (1600, 800, 3)
    flags = decode_flags(monkeypatch)
    small = decode_image(data, min_side=100)
    assert flags == [cv2.IMREAD_REDUCED_COLOR_8] and small.shape == (200, 100, 3)
    assert mean_abs_diff(small, area(full, (200, 100))) < 3.0  # same picture, same way up
    other = decode_image(camera_jpeg((1600, 800), orientation=14 - orientation), min_side=100)
    assert mean_abs_diff(small, other) > 20  # 6 and 8 differ by 180 degrees: the test can tell
    fitted = decode_image(data, max_side=400)
    assert fitted.shape == (400, 200, 3) and mean_abs_diff(fitted, area(full, (400, 200))) < 3.0


def test_pixel_limit_still_rejects_before_any_decode(monkeypatch):
    data = camera_jpeg((1000, 800))
    flags = decode_flags(monkeypatch)
    for kwargs in ({"min_side": 64}, {"max_side": 64}):
        with pytest.raises(ImageError) as e:
            decode_image(data, max_pixels=100_000, **kwargs)
        assert e.value.reason == "too large" and "1000x800" in e.value.detail
    assert flags == []


def test_truncation_is_still_caught_on_the_reduced_path():
    data = camera_jpeg((1000, 800))
    for cut in (data[: len(data) // 2], data[: len(data) // 2] + b"\xff\xd9"):
        with pytest.raises(ImageError) as e:
            decode_image(cut, min_side=64)
        assert e.value.reason == "truncated"


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_max_side_never_enlarges_and_gives_the_exact_long_side(tmp_path, ext):
    img = photo("coffee", (301, 207))
    path = tmp_path / f"x{ext}"
    Image.fromarray(img).save(path, quality=95)
    full = read_image(path)
    assert np.array_equal(read_image(path, max_side=301), full)
    assert np.array_equal(read_image(path, max_side=5000), full)  # never enlarged
    for n in (300, 150, 97, 7):
        out = read_image(path, max_side=n)
        assert out.shape == (round(207 * n / 301), n, 3)
        assert np.array_equal(read_image(path, max_side=n, reduced=False), area(full, out.shape[:2]))
    tall = tmp_path / f"tall{ext}"
    Image.fromarray(np.ascontiguousarray(img.transpose(1, 0, 2))).save(tall, quality=95)
    assert read_image(tall, max_side=100).shape == (100, round(207 * 100 / 301), 3)


def test_other_formats_decode_fully_then_resize(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.fromarray(photo("rocket", (400, 300))).save(path)
    flags = decode_flags(monkeypatch)
    assert read_image(path, min_side=50).shape == (300, 400, 3)  # a PNG has no reduced decode
    assert read_image(path, max_side=100).shape == (75, 100, 3)
    assert cv2.IMREAD_UNCHANGED in flags and all(f == cv2.IMREAD_UNCHANGED for f in flags)


def test_reduction_uses_short_and_long_sides_only():
    assert reduction(4032, 3024, min_side=224) == 8 and reduction(3024, 4032, min_side=224) == 8
    assert reduction(4032, 3024, min_side=400) == 4 and reduction(4032, 3024, max_side=1024) == 2
    assert reduction(4032, 3024, min_side=224, max_side=1024) == 2  # both needs kept
    assert reduction(100, 80, min_side=224) == 1 and reduction(4032, 3024) == 1


def test_policy_version_says_whether_reduced_decoding_is_allowed():
    assert DECODE_POLICY.startswith("augkit-v2:") and decode_policy_reduces(DECODE_POLICY)
    assert not decode_policy_reduces("augkit-v1: rgb uint8, exif-oriented, alpha over white, 16-bit/257")
    assert not decode_policy_reduces("pil: no exif") and not decode_policy_reduces("")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "224"])
def test_bad_sizes_are_usage_errors(bad):
    with pytest.raises(UsageError, match="max_side must be a positive"):
        decode_image(camera_jpeg((64, 48)), max_side=bad)
