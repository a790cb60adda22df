"""The colour ops' transforms (augkit.recipe.colour) against albumentations' own: pixels, draws, passes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tracemalloc

import albumentations as A
import cv2
import numpy as np
import pytest

from augkit.recipe import colour
from augkit.recipe.api import export_albumentations, parse_recipe, seed_random_state
from augkit.recipe.colour import ColorJitter, RandomBrightnessContrast

ORDERS = [list(o) for o in itertools.permutations(range(4))]
#: (brightness, contrast, saturation, hue): the schema's ends (factors 0 and 10, hue +-0.5), no-ops and
#: typical draws
JITTERS = [
    (0.0, 0.0, 0.0, -0.5),
    (10.0, 10.0, 10.0, 0.5),
    (0.0, 10.0, 0.0, 0.5),
    (10.0, 0.0, 10.0, -0.5),
    (1.0, 1.0, 1.0, 0.0),
    (1.25, 0.75, 1.2, 0.03),
    (0.8, 1.3, 0.7, -0.03),
    (1.1, 0.9, 1.0, 0.002),
    (0.3, 4.0, 2.5, -0.2),
]


def photo(name: str, size=(48, 40)) -> np.ndarray:
    import skimage.data

    return cv2.resize(getattr(skimage.data, name)(), size, interpolation=cv2.INTER_AREA)


PHOTOS = ("chelsea", "astronaut", "coffee")


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == np.uint8 and got.shape == want.shape, (what, got.dtype, got.shape, want.shape)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"{what}: {int((diff > 1).sum())} pixels differ by more than 1 level (max {diff.max()})"


# ====================================================================== pixels


@pytest.mark.parametrize("name", PHOTOS)
def test_color_jitter_equals_albumentations_in_every_order_and_at_the_extremes(name):
    img = photo(name)
    stock, ours = A.ColorJitter(p=1), ColorJitter(p=1)
    for args in JITTERS:
        for order in ORDERS:
            want = stock.apply(img.copy(), *args, order=order)
            got = ours.apply(img, *args, order=order)
            assert_close(got, want, f"{name} {args} order {order}")


@pytest.mark.parametrize("shape", ["hw", "hw1"])
def test_color_jitter_on_grey_images_equals_albumentations(shape):
    grey = cv2.cvtColor(photo("astronaut"), cv2.COLOR_RGB2GRAY)
    img = grey if shape == "hw" else grey[..., None]
    stock, ours = A.ColorJitter(p=1), ColorJitter(p=1)
    for args in JITTERS:
        for order in ORDERS:
            assert_close(ours.apply(img, *args, order=order), stock.apply(img.copy(), *args, order=order), str(args))


def test_color_jitter_leaves_the_callers_image_alone_and_returns_it_when_nothing_changes():
    img = photo("coffee")
    before = img.copy()
    img.setflags(write=False)  # a write into the caller's image would raise
    for args in JITTERS:
        ColorJitter(p=1).apply(img, *args, order=[1, 0, 2, 3])
    assert np.array_equal(img, before)
    assert ColorJitter(p=1).apply(img, 1.0, 1.0, 1.0, 0.0, order=[0, 1, 2, 3]) is img


@pytest.mark.parametrize("name", PHOTOS)
def test_linear_equals_albumentations_at_the_extremes(name):
    img = photo(name)
    stock, ours = A.RandomBrightnessContrast(p=1), RandomBrightnessContrast(p=1)
    # linear's schema: a in [0, 10], b in [-255, 255] levels (alpha = a, beta = b)
    for alpha, beta in itertools.product((0.0, 0.01, 0.8, 1.0, 1.2, 10.0), (-255.0, -20.0, 0.0, 7.5, 20.0, 255.0)):
        assert_close(ours.apply(img, alpha, beta), stock.apply(img, alpha, beta), f"{name} a={alpha} b={beta}")


def test_float_images_take_albumentations_path():
    img = photo("chelsea").astype(np.float32) / 255
    want = A.ColorJitter(p=1).apply(img.copy(), 1.2, 0.8, 1.3, 0.05, order=[3, 2, 1, 0])
    got = ColorJitter(p=1).apply(img, 1.2, 0.8, 1.3, 0.05, order=[3, 2, 1, 0])
    assert got.dtype == np.float32 and np.allclose(got, want)
    with pytest.raises(TypeError, match="1-channel or 3-channel"):
        ColorJitter(p=1).apply(np.zeros((8, 8, 4), np.uint8), 1.2, 1, 1, 0, order=[0, 1, 2, 3])


# ====================================================================== draws and manifests

COLOUR_RECIPE = """
train:
  - color: {brightness: 0.4, contrast: [0.5, 1.8], saturation: 0.5, hue: 0.05, p: 0.8}
  - linear: {a: [0.7, 1.3], b: [-30, 30], p: 0.6}
  - one_of:
      p: 0.9
      steps:
        - color: {brightness: 0.25, contrast: 0.25, saturation: 0.25}
        - linear: {a: [0.8, 1.2], b: [-20, 20]}
"""


def test_a_recipe_draws_and_records_exactly_what_albumentations_classes_would(monkeypatch):
    recipe = parse_recipe(COLOUR_RECIPE)
    ours = recipe.build()
    with monkeypatch.context() as m:  # the same recipe built with albumentations' own classes
        m.setattr(colour, "ColorJitter", A.ColorJitter)
        m.setattr(colour, "RandomBrightnessContrast", A.RandomBrightnessContrast)
        stock = recipe.build()
        assert type(recipe.to_albumentations().transforms[0]) is A.ColorJitter  # the patch took
    img = photo("astronaut")
    kinds = set()
    for seed in range(60):
        got, applied = ours(img, seed)
        want, applied_stock = stock(img, seed)
        assert applied == applied_stock, f"seed {seed}"
        assert_close(got, want, f"seed {seed}")
        kinds.add(tuple(a["op"] for a in applied))
    assert len(kinds) >= 4  # the seeds reach different combinations of steps


# ====================================================================== passes and memory


def count_tables(monkeypatch) -> list:
    calls: list = []
    real = colour.sz_lut

    def spy(img, lut, inplace=True):
        calls.append(img.shape)
        return real(img, lut, inplace=inplace)

    monkeypatch.setattr(colour, "sz_lut", spy)
    return calls


def test_contrast_then_brightness_is_one_pass(monkeypatch):
    img = photo("coffee")
    calls = count_tables(monkeypatch)
    out = ColorJitter(p=1).apply(img, 1.3, 0.7, 1.0, 0.0, order=[1, 0, 2, 3])  # contrast, brightness
    assert len(calls) == 1
    assert_close(out, A.ColorJitter(p=1).apply(img, 1.3, 0.7, 1.0, 0.0, order=[1, 0, 2, 3]), "c->b")
    calls.clear()
    ColorJitter(p=1).apply(img, 1.3, 0.7, 1.0, 0.0, order=[0, 1, 2, 3])  # brightness first: contrast needs its mean
    assert len(calls) == 2


def peak_over_image(fn, img: np.ndarray) -> float:
    fn()  # warm: first-call allocations (OpenCV, numpy caches) are not the image's
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8
    return peak / img.nbytes


def test_no_float_copy_of_the_image():
    img = photo("astronaut", (320, 240))
    cj, lin = ColorJitter(p=1), RandomBrightnessContrast(p=1)
    for args in JITTERS:
        for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]):
            peak = peak_over_image(lambda: cj.apply(img, *args, order=order), img)
            assert peak < 4.0, f"{args} {order}: {peak:.2f} x the image: a float32 copy is 4 x"
    # one pass, one buffer: contrast then brightness, and linear
    assert peak_over_image(lambda: cj.apply(img, 1.3, 0.7, 1.0, 0.0, order=[1, 0, 2, 3]), img) < 1.5
    assert peak_over_image(lambda: lin.apply(img, 1.2, -20.0), img) < 1.5


def conversions(monkeypatch) -> list:
    codes: list = []
    real = cv2.cvtColor

    def spy(src, code, *args, **kw):
        codes.append(code)
        return real(src, code, *args, **kw)

    monkeypatch.setattr(colour.cv2, "cvtColor", spy)
    return codes


def test_hue_zero_makes_no_hsv_round_trip(monkeypatch):
    codes = conversions(monkeypatch)
    img = photo("chelsea")
    aug = parse_recipe("train:\n  - color: {brightness: 0.3, contrast: 0.3, saturation: 0.3, p: 1}\n").build()
    for seed in range(20):
        aug(img, seed)
    assert codes and cv2.COLOR_RGB2HSV not in codes and cv2.COLOR_HSV2RGB not in codes  # grey yes, HSV never
    codes.clear()
    ColorJitter(p=1).apply(img, 1.0, 1.0, 1.0, 0.02, order=[0, 1, 2, 3])
    assert codes == [cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB]


# ====================================================================== export


def test_export_loads_without_augkit_and_reproduces_the_pixels(tmp_path):
    """The colour transforms are written as albumentations' own classes: a process that never imports
    augkit loads the export, and seeded as augkit seeds it, gives augkit's pixels exactly."""
    recipe = parse_recipe(COLOUR_RECIPE)
    path = export_albumentations(recipe, tmp_path / "colour.json")
    d = json.loads(path.read_text())
    assert "import_first" not in d["__augkit__"]
    assert "ColorJitter" in path.read_text() and "augkit.recipe.colour" not in path.read_text()
    img = photo("coffee")
    np.save(tmp_path / "in.npy", img)
    script = f"""
import os, random, sys; os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
import numpy as np, albumentations as A
p = A.load({str(path)!r}); img = np.load({str(tmp_path / "in.npy")!r})
outs = []
for seed in range(12):
    p.set_random_state(np.random.default_rng(seed), random.Random(seed))  # augkit's seed_random_state
    outs.append(p(image=img)["image"])
np.save({str(tmp_path / "out.npy")!r}, np.stack(outs))
assert not any(m.startswith("augkit") for m in sys.modules), "the export imported augkit"
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=tmp_path)
    outs = np.load(tmp_path / "out.npy")
    aug = recipe.build()
    for seed in range(12):
        assert np.array_equal(outs[seed], aug(img, seed)[0]), f"seed {seed}"
    assert sum(not np.array_equal(o, img) for o in outs) >= 8
    loaded = A.load(str(path))
    assert type(loaded.transforms[0]) is A.ColorJitter  # albumentations' class, also where augkit is imported
    seed_random_state(loaded, 3)
    assert np.array_equal(loaded(image=img)["image"], aug(img, 3)[0])


def test_policy_per_value_ops_make_no_float_copy():
    """trivial_augment/rand_augment's Brightness, Solarize and AutoContrast are tables (their pixels are
    checked against torchvision v2 in tests/test_policies.py): one uint8 output, no float image."""
    from augkit.recipe.policies.functional import apply_op

    img = photo("coffee", (320, 240))
    for name, m in (("Brightness", 0.6), ("Brightness", -0.6), ("Solarize", 100.0), ("AutoContrast", 0.0)):
        assert peak_over_image(lambda: apply_op(img, name, m), img) < 2.5, name
    # Color and Sharpness blend through (value, grey/blur) tables: no float copy of the three channels (the
    # float kernels peaked at 24 x and 44 x the image; Color's grey plane is still float)
    for name in ("Color", "Sharpness"):
        assert peak_over_image(lambda: apply_op(img, name, 0.7), img) < 12, name


def test_sharpness_rounds_its_integer_blur_as_v2():
    """floor(t / 13 + 0.5) in float64 (v2) is (2t + 13) // 26 for every 3x3 sum t of uint8 values."""
    t = np.arange(13 * 255 + 1)
    assert np.array_equal(np.floor(t.astype(np.float32) / np.float64(13.0) + 0.5), (2 * t + 13) // 26)
