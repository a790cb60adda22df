"""Colour steps per image: albumentations' own transforms against augkit's (``augkit.recipe.colour``).

Per op, on uint8 RGB photos (scikit-image's chelsea, astronaut, coffee) at 224x224 and 500x375, the
median time of ``apply`` over many calls with the same drawn parameters for both (so only how the
pixels are touched differs), and the ratio stock / augkit (above 1: augkit is faster). The ``draws``
rows draw the parameters as the ``color``/``linear`` ops of the ``default`` recipe do (a seeded
generator, one draw per call, the same sequence for both), so ColorJitter's random order is mixed in
as in training. OpenCV runs on one thread (as in augkit's workers). A second table times the policies'
colour ops (trivial_augment/rand_augment) against torchvision v2's, which they match pixel for pixel.

Run alone on a quiet machine (timings are meaningless next to other busy processes):
    .venv/bin/python benchmarks/bench_colour.py            # --count 400
    .venv/bin/python benchmarks/bench_colour.py --count 20 # checks that it works
A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from augkit.recipe.api import parse_recipe  # noqa: E402
from augkit.recipe.colour import ColorJitter, RandomBrightnessContrast  # noqa: E402

SIZES = ((224, 224), (500, 375))
PHOTOS = ("chelsea", "astronaut", "coffee")
#: ColorJitter.apply arguments (brightness, contrast, saturation, hue, order): each change alone, pairs, all
FIXED = {
    "brightness": (1.2, 1.0, 1.0, 0.0, [0, 1, 2, 3]),
    "contrast": (1.0, 0.8, 1.0, 0.0, [0, 1, 2, 3]),
    "saturation": (1.0, 1.0, 1.2, 0.0, [0, 1, 2, 3]),
    "hue": (1.0, 1.0, 1.0, 0.03, [0, 1, 2, 3]),
    "contrast, brightness": (1.2, 0.8, 1.0, 0.0, [1, 0, 2, 3]),
    "brightness, contrast": (1.2, 0.8, 1.0, 0.0, [0, 1, 2, 3]),
    "b, c, s (hue 0)": (1.2, 0.8, 1.2, 0.0, [1, 0, 2, 3]),
    "b, c, s, h": (1.2, 0.8, 1.2, 0.03, [0, 1, 2, 3]),
}
#: the default recipe's colour steps, as built by augkit (for their parameter ranges)
DEFAULT_COLOUR = """
train:
  - color: {brightness: 0.25, contrast: 0.25, saturation: 0.25, hue: 0.03}
  - linear: {a: [0.8, 1.2], b: [-20, 20]}
"""


def photos(size: tuple[int, int]) -> list[np.ndarray]:
    import skimage.data

    return [cv2.resize(getattr(skimage.data, n)(), size, interpolation=cv2.INTER_AREA) for n in PHOTOS]


def median_us(fn, calls: list[tuple]) -> float:
    """Median microseconds of ``fn(*args)`` over ``calls`` (after one warm-up call)."""
    fn(*calls[0])
    times = []
    for args in calls:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def draws(transform, imgs: list[np.ndarray], count: int, seed: int = 0) -> list[tuple]:
    """``count`` (image, params) pairs drawn by ``transform`` as a seeded pipeline draws them."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = []
    for i in range(count):
        img = imgs[i % len(imgs)]
        params = transform.get_params()
        params.update(transform.get_params_dependent_on_data({"shape": img.shape}, {"image": img}))
        out.append((img, params))
    return out


def row(name: str, size, stock_us: float, ours_us: float) -> None:
    print(
        f"| {name} | {size[0]}x{size[1]} | {stock_us:8.1f} | {ours_us:8.1f} | {stock_us / ours_us:5.2f}x |", flush=True
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=400, help="calls per op and size (median of these)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"load average before: {os.getloadavg()[0]:.2f}, cpus: {os.cpu_count()}, count: {args.count}")
    print("| op | size | albumentations us | augkit us | ratio |\n| --- | --- | ---: | ---: | ---: |")
    stock_cj, ours_cj = A.ColorJitter(p=1), ColorJitter(p=1)
    stock_lin, ours_lin = A.RandomBrightnessContrast(p=1), RandomBrightnessContrast(p=1)
    color_t, linear_t = parse_recipe(DEFAULT_COLOUR).to_albumentations().transforms
    for size in SIZES:
        imgs = photos(size)
        for name, prm in FIXED.items():
            calls = [(imgs[i % len(imgs)], *prm) for i in range(args.count)]
            row(f"ColorJitter {name}", size, median_us(stock_cj.apply, calls), median_us(ours_cj.apply, calls))
        calls = [(imgs[i % len(imgs)], 1.1, 12.0) for i in range(args.count)]
        row(
            "linear (RandomBrightnessContrast)",
            size,
            median_us(stock_lin.apply, calls),
            median_us(ours_lin.apply, calls),
        )
        drawn = draws(color_t, imgs, args.count)
        row(
            "draws: default's color",
            size,
            median_us(lambda img, p: stock_cj.apply(img, **p), drawn),
            median_us(lambda img, p: color_t.apply(img, **p), drawn),
        )
        drawn = draws(linear_t, imgs, args.count)
        row(
            "draws: default's linear",
            size,
            median_us(lambda img, p: stock_lin.apply(img, **p), drawn),
            median_us(lambda img, p: linear_t.apply(img, **p), drawn),
        )
    policies(args.count)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


#: the policies' colour ops at TrivialAugment's bin 15 (factor 1.5; Posterize 5 bits; Solarize 127.5)
POLICY_OPS = {
    "Brightness": 0.5,
    "Color": 0.5,
    "Contrast": 0.5,
    "Sharpness": 0.5,
    "Posterize": 5,
    "Solarize": 127.5,
    "AutoContrast": 0.0,
    "Equalize": 0.0,
}


def policies(count: int) -> None:
    """trivial_augment/rand_augment's colour ops: augkit's uint8 kernels vs torchvision v2's on uint8 tensors
    (the reference they are pixel-equal to; one torch thread, the tensor made before timing)."""
    from augkit.recipe.policies.functional import apply_op

    try:
        import torch
        from torchvision.transforms.v2 import functional as TF
    except ImportError:
        print("(torchvision not installed: the policies' table is skipped)")
        return
    torch.set_num_threads(1)
    v2 = {
        "Brightness": lambda t, m: TF.adjust_brightness(t, 1 + m),
        "Color": lambda t, m: TF.adjust_saturation(t, 1 + m),
        "Contrast": lambda t, m: TF.adjust_contrast(t, 1 + m),
        "Sharpness": lambda t, m: TF.adjust_sharpness(t, 1 + m),
        "Posterize": lambda t, m: TF.posterize(t, int(m)),
        "Solarize": lambda t, m: TF.solarize(t, m),
        "AutoContrast": lambda t, m: TF.autocontrast(t),
        "Equalize": lambda t, m: TF.equalize(t),
    }
    print("\n| policy op | size | torchvision v2 us | augkit us | ratio |\n| --- | --- | ---: | ---: | ---: |")
    for size in SIZES:
        imgs = photos(size)
        tensors = [torch.from_numpy(i).permute(2, 0, 1).contiguous() for i in imgs]
        for name, m in POLICY_OPS.items():
            ours = [(imgs[i % len(imgs)], name, m) for i in range(count)]
            theirs = [(tensors[i % len(imgs)], m) for i in range(count)]
            row(f"policy {name}", size, median_us(v2[name], theirs), median_us(apply_op, ours))


if __name__ == "__main__":
    main()
