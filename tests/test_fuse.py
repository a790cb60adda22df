"""One warp per sample (augkit/recipe/fuse.py, augkit/io/warped.py): the same draws, pixels within a stated tolerance.

Tolerances, in uint8 levels, on the *interior*: the output pixels whose every step-by-step sample
fell inside its input (found by running the same draws with a constant-0 border on a white image,
then eroding 2 pixels). Outside it the two paths differ by design (a chain fills each step's border
from the previous step's output, the single warp from the source). Measured on 96x72 photos (the
worst case: much detail per pixel; at 192x144 the figures are about 2/3 of these):

* bilinear runs (flip/shift/rotate/affine): mean |diff| <= LINEAR_MEAN, 99th percentile <=
  LINEAR_P99 (seen: mean 7.0 and p99 37 for two 20-degree rotations, the chain's second
  bilinear pass blurs; integer shifts and flips: 0);
* nearest-neighbour runs (the policies' Shear/Translate/Rotate): one rounding instead of two
  moves edges by a pixel, so each fused pixel is compared with the closest of the step-by-step
  pixels within one pixel: mean <= NEAREST_MEAN, p99 <= NEAREST_P99 (seen: Shear 0.05 / 0,
  Rotate 1.8 / 30; Translate: 0).
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from _imgs import photo as make_photo
from _imgs import write
from torch.utils.data import DataLoader

from augkit.io.images import read_image
from augkit.io.preprocess import eval_image, resize_short
from augkit.io.warped import DecodedFile, ShapeChanged
from augkit.recipe.api import Step, load_recipe, parse_recipe, seed_random_state, step_extremes
from augkit.recipe.fuse import run_fused
from augkit.training.dataset import AugmentedImageFolder

LINEAR_MEAN, LINEAR_P99 = 8.0, 45
NEAREST_MEAN, NEAREST_P99 = 3.0, 45
SEEDS = range(12)
#: the classic geometric ops, each in a chain that has at least two resampling steps
CLASSIC = {
    "flip horizontal": "- flip: {direction: horizontal, p: 1}\n  - rotate: {degrees: 8, p: 1}\n  - shift: {x: 0.05, y: 0.05, p: 1}",
    "flip vertical": "- flip: {direction: vertical, p: 1}\n  - rotate: {degrees: 8, p: 1}\n  - shift: {x: 0.05, y: 0.05, p: 1}",
    "flip both": "- flip: {direction: both, p: 1}\n  - rotate: {degrees: 8, p: 1}\n  - affine: {scale: [0.9, 1.1], p: 1}",
    "shift": "- shift: {x: 0.1, y: 0.1, p: 1}\n  - shift: {x: 0.1, y: 0.1, p: 1}",
    "rotate": "- rotate: {degrees: 20, p: 1}\n  - rotate: {degrees: 20, p: 1}",
    "affine": "- affine: {scale: [0.85, 1.15], shear: 10, translate: 0.05, rotate: 15, p: 1}\n"
    "  - affine: {scale: [0.9, 1.1], shear: 5, rotate: 10, p: 1}",
}
POLICY_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [make_photo(n, (96, 72)) for n in ("chelsea", "astronaut", "coffee")]


def _recipe(steps: str, border: str = "reflect"):
    return parse_recipe(f"border: {border}\nfill: 0\ntrain:\n  {steps}\n")


def _policy_recipe(policy: str, op: str, bin_: int):
    """A policy step drawing only ``op`` at magnitude bin ``bin_``, twice in a row (two warps fused)."""
    r = parse_recipe(f"train:\n  - {policy}: {{}}\n")
    (step,) = r.train
    params = {**step.params, "only": [op], "bin": bin_}
    one = Step(step.op, params, 1.0, step.where, step.line)
    r.train = [one, copy.deepcopy(one)]
    return r


def _interior(recipe, img: np.ndarray, seed: int) -> np.ndarray:
    """Pixels whose every step-by-step sample fell inside its input: the same draws on a white
    image with a constant-0 border, eroded by 2 pixels."""
    white = copy.deepcopy(recipe)
    white.border, white.fill = "constant", 0
    for s in white.train:
        s.params.pop("border", None)
        s.params.pop("fill", None)
    out = white.build()(np.full_like(img, 255), seed, fused=False)[0]
    return cv2.erode((out.min(axis=2) == 255).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def _compare(recipe, img: np.ndarray, seed: int, shift: int = 0) -> tuple[float, float, int]:
    """(mean, p99, pixels compared) of |fused - step by step| on the interior; ``shift``: each fused
    pixel against the closest step-by-step pixel within that many pixels."""
    aug = recipe.build()
    fused, applied_f = aug(img, seed)
    plain, applied_p = aug(img, seed, fused=False)
    assert applied_f == applied_p
    inside = _interior(recipe, img, seed)
    f = fused.astype(np.int16)
    h, w = f.shape[:2]
    padded = np.pad(plain.astype(np.int16), ((shift, shift), (shift, shift), (0, 0)), mode="edge")
    d = np.full((h, w), 255, np.int16)
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            d = np.minimum(d, np.abs(f - padded[dy : dy + h, dx : dx + w]).max(axis=2))
    d = d[inside]
    if d.size == 0:
        return 0.0, 0.0, 0
    return float(d.mean()), float(np.percentile(d, 99)), int(d.size)


# ====================================================================== every geometric op


@pytest.mark.parametrize("name", list(CLASSIC))
def test_classic_geometric_ops_fused_agree_with_step_by_step(name, photos):
    recipe = _recipe(CLASSIC[name])
    compared = 0
    for img in photos:
        for seed in SEEDS:
            mean, p99, n = _compare(recipe, img, seed)
            assert mean <= LINEAR_MEAN and p99 <= LINEAR_P99, f"{name} seed {seed}: mean {mean:.2f}, p99 {p99}"
            compared += n > 500
    assert compared >= len(photos) * len(SEEDS) * 0.8  # an interior to compare, nearly always


@pytest.mark.parametrize("policy", ["trivial_augment", "rand_augment"])
@pytest.mark.parametrize("op", POLICY_GEOMETRIC)
def test_policy_geometric_ops_fused_agree_with_step_by_step(policy, op, photos):
    bins = (5, 12) if policy == "trivial_augment" else (9,)
    for bin_ in bins:
        recipe = _policy_recipe(policy, op, bin_)
        for img in photos:
            for seed in SEEDS:
                mean, p99, n = _compare(recipe, img, seed, shift=1)
                assert mean <= NEAREST_MEAN and p99 <= NEAREST_P99, (
                    f"{policy} {op} bin {bin_} seed {seed}: mean {mean:.2f}, p99 {p99} of {n}"
                )


def test_fusion_really_happens_and_a_single_warp_is_exact(photos):
    img = photos[0]
    two = _recipe(CLASSIC["rotate"]).build()
    seed_random_state(two.compose, 3)
    _, walk = run_fused(two.compose, img)
    assert walk.warps_done == 1  # two rotations, one warp
    assert not np.array_equal(two(img, 3)[0], two(img, 3, fused=False)[0])
    one = load_recipe("default").build()  # flip + one affine: nothing to fuse, exactly the old pixels
    for seed in SEEDS:
        assert np.array_equal(one(img, seed)[0], one(img, seed, fused=False)[0])


def test_every_policy_extreme_alone_is_exact(photos):
    """A run of one policy warp is replayed by the policy's own kernel: torchvision parity holds."""
    for policy in ("trivial_augment", "rand_augment"):
        step = parse_recipe(f"train:\n  - {policy}: {{}}\n").train[0]
        for _, extreme in step_extremes(step):
            r = parse_recipe("train: [flip]\n")
            r.train = [extreme]
            aug = r.build()
            assert np.array_equal(aug(photos[1], 0)[0], aug(photos[1], 0, fused=False)[0])


# ====================================================================== same draws


def _state(compose) -> tuple:
    return compose.py_random.getstate(), str(compose.random_generator.bit_generator.state)


@pytest.mark.parametrize(
    "name", ["default", "heavy", "light", "digits", "trivial", "digits-trivial", "chain", "policies"]
)
def test_same_parameters_manifest_and_generator_state(name, photos):
    if name == "chain":
        recipe = _recipe(
            "- flip: {direction: both, p: 0.5}\n  - shift: {x: 0.1, y: 0.1, p: 0.7}\n"
            "  - one_of: {steps: [{rotate: {degrees: 20}}, {color: {brightness: 0.3}}]}\n"
            "  - some_of: {n: 2, steps: [{affine: {scale: [0.9, 1.1], rotate: 5}}, {linear: {}}, {rotate: {degrees: 5}}]}\n"
            "  - albumentations: {transform: ElasticTransform, p: 0.3}\n  - rotate: {degrees: 10, p: 0.5}"
        )
    elif name == "policies":
        recipe = parse_recipe("train:\n  - trivial_augment: {}\n  - rand_augment: {n: 3, m: 12}\n  - flip: {}\n")
    else:
        recipe = load_recipe(name)
    aug = recipe.build()
    for seed in range(40):
        img = photos[seed % len(photos)]
        _, applied_f = aug(img, seed)
        after_f = _state(aug.compose)
        _, applied_p = aug(img, seed, fused=False)
        assert applied_f == applied_p, f"{name} seed {seed}"
        assert after_f == _state(aug.compose), f"{name} seed {seed}: a different number of draws"


def test_pixel_statistics_of_a_recipe_do_not_change(photos):
    recipe = _recipe(CLASSIC["affine"] + "\n  - rotate: {degrees: 10, p: 0.5}\n  - flip: {p: 0.5}")
    aug = recipe.build()
    stats = {True: [], False: []}
    for seed in range(30):
        for img in photos:
            for fused in (True, False):
                out = aug(img, seed, fused=fused)[0].astype(np.float64)
                stats[fused].append((out.mean(), out.std()))
    f, p = np.array(stats[True]), np.array(stats[False])
    assert abs(f[:, 0].mean() - p[:, 0].mean()) <= 0.5  # mean level
    assert abs(f[:, 1].mean() - p[:, 1].mean()) <= 2.0  # contrast (std): one resampling blurs less (seen 1.3)
    assert f[:, 1].mean() >= p[:, 1].mean() - 0.1  # ... never more


# ====================================================================== the training view


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusejpegs")
    for i, name in enumerate(("chelsea", "astronaut", "coffee") * 2):
        ext = ".png" if i == 5 else ".jpg"  # one PNG: decoded whole, warped the same way
        write(root / f"c{i % 2}" / f"{name}{i}{ext}", make_photo(name, (200, 150), offset=i))
    return root


def _dataset(root, **kw):
    opts = dict(recipe="default", image_size=96, output="uint8", seed=3, memory_cache=0)
    return AugmentedImageFolder(root, **{**opts, **kw})


def test_dataset_same_tensors_with_0_and_2_workers(jpeg_folder):
    ds = _dataset(jpeg_folder)
    ds.set_epoch(2)
    alone = torch.stack([ds[i][0] for i in range(len(ds))])
    with_workers = torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)])
    assert torch.equal(alone, with_workers)


def test_dataset_fused_view_close_to_resize_recipe_crop(jpeg_folder):
    fused, plain = _dataset(jpeg_folder), _dataset(jpeg_folder, fused=False)
    means = []
    for epoch in range(4):
        fused.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(len(fused)):
            a, b = fused[i][0].numpy().astype(np.int16), plain[i][0].numpy().astype(np.int16)
            d = np.abs(a - b).max(axis=0)[8:-8, 8:-8]  # default: reflect border, rotations up to 12 degrees
            means.append(d.mean())
            # one bilinear warp shrinking 1.56x (sharper, some aliasing) vs area resize + bilinear warp
            assert d.mean() <= 8.0 and np.percentile(d, 99) <= 45, f"sample {i} epoch {epoch}"
    assert np.mean(means) <= 3.5  # seen 2.5 (and 1.2 for 500x375 photos at 224 px)
    # the memory cache path (working image kept) is fused too, and close to the file path
    cached = _dataset(jpeg_folder, memory_cache=1 << 20)
    a = torch.stack([cached[i][0] for i in range(len(cached))]).to(torch.int16)
    fused.set_epoch(0)
    b = torch.stack([fused[i][0] for i in range(len(fused))]).to(torch.int16)
    assert (a - b).abs().float().mean() <= 2.0


def test_dataset_without_geometry_applied(jpeg_folder):
    """Colour only. From the memory cache: no warp, the old resize + crop exactly. From the file
    (memory cache off): the resize is one bilinear warp like every other sample's, close to the old."""
    r = parse_recipe("train:\n  - linear: {a: [0.8, 1.2], b: [-10, 10]}\n")
    kept = _dataset(jpeg_folder, recipe=r, memory_cache=1 << 22)
    plain = _dataset(jpeg_folder, recipe=r, fused=False)
    from_file = _dataset(jpeg_folder, recipe=r)
    for i in range(len(kept)):
        assert torch.equal(kept[i][0], plain[i][0])
        d = (from_file[i][0].to(torch.int16) - plain[i][0].to(torch.int16)).abs().float()
        assert d.mean() <= 4.0, f"sample {i}"


# ====================================================================== reading what the warp reaches


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A 2048x1536 JPEG (astronaut and coffee side by side, upscaled)."""
    from skimage import data

    img = np.concatenate([data.astronaut(), cv2.resize(data.coffee(), (512, 512))], axis=1)
    img = cv2.resize(img, (2048, 1536), interpolation=cv2.INTER_CUBIC)
    return write(tmp_path_factory.mktemp("big") / "big.jpg", img)


def _view(path, recipe, seed, size, **kw):
    src = DecodedFile(path, size, **kw)
    out = recipe.build().view(src, seed, size)[0]
    return out, src


def test_region_and_dct_scale_follow_the_matrix(big_jpeg):
    zoom = _recipe("- affine: {scale: [2.0, 2.0], rotate: 5, p: 1}\n  - rotate: {degrees: 5, p: 1}")
    out, src = _view(big_jpeg, zoom, 0, 64)
    read = src.last
    # 1536 / 64 = 24 full pixels per output pixel, zoomed 2x: 12 -> DCT 1/8 (192x256), a warp shrinking 1.5x
    assert read.k == 8 and read.decoded_hw == (192, 256) and read.shrink == 1
    x0, y0, x1, y1 = read.region
    assert read.region_pixels < 0.4 * 192 * 256  # about the central half of each side
    assert 0 < x0 < x1 < 256 and 0 < y0 < y1 < 192
    # the same warp from the whole full-size decode: close (the DCT decode is a good 1/8 average)
    full = DecodedFile(big_jpeg, 64, reduced=False)
    ref = zoom.build().view(full, 0, 64)[0]
    assert full.last.k == 1 and full.last.shrink > 1  # no DCT: an area shrink of the region first
    d = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    assert d.mean() <= 5.0 and np.percentile(d, 99) <= 40  # seen 3.4 / 26
    # without the zoom, a smaller share of pixels per output pixel... still within the 1/8 decode
    plain = _recipe("- rotate: {degrees: 5, p: 1}\n  - shift: {x: 0.02, y: 0.02, p: 1}")
    _, src2 = _view(big_jpeg, plain, 0, 64)
    assert src2.last.k == 8


def test_region_crop_gives_the_same_pixels_as_the_whole_picture(big_jpeg, monkeypatch):
    from augkit.io import warped

    r = _recipe("- affine: {scale: [2.0, 2.0], rotate: 5, p: 1}\n  - rotate: {degrees: 8, p: 1}")
    cropped, src = _view(big_jpeg, r, 1, 64)
    assert src.last.shrink == 1  # (an area shrink averages blocks from the region's corner: not compared)
    assert src.last.region_pixels < np.prod(src.last.decoded_hw)
    monkeypatch.setattr(warped, "reach", lambda m, out_hw, margin=2: (-1, -1, 10**6, 10**6))  # never cut
    whole, src_whole = _view(big_jpeg, r, 1, 64)
    assert src_whole.last.region_pixels == np.prod(src_whole.last.decoded_hw)
    # equal but for OpenCV's fixed-point sample positions, which round a shifted matrix's offsets anew
    d = np.abs(cropped.astype(np.int16) - whole.astype(np.int16))
    assert d.max() <= 1 and (d > 0).mean() < 0.002


def test_view_from_the_file_is_close_to_the_old_path(big_jpeg):
    recipe = load_recipe("heavy")
    aug = recipe.build()
    for seed in range(6):
        src = DecodedFile(big_jpeg, 56)
        fused = aug.view(src, seed, 56)[0]
        old = aug.view(resize_short(read_image(big_jpeg, min_side=56), 56), seed, 56, fused=False)[0]
        d = np.abs(fused.astype(np.int16) - old.astype(np.int16)).max(axis=2)[6:-6, 6:-6]
        assert d.mean() <= 6.0, f"seed {seed}"  # heavy: noise and dropout are drawn the same, on other pixels


def test_exif_turned_jpeg_draws_for_the_turned_shape(tmp_path):
    from PIL import Image

    img = make_photo("astronaut", (120, 80))  # stored landscape, shown portrait (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(img).save(path, quality=95, exif=exif.tobytes())
    shown = read_image(path)
    assert shown.shape[:2] == (120, 80)
    r = _recipe("- affine: {translate: 0.1, rotate: 10, p: 1}\n  - shift: {x: 0.1, y: 0.0, p: 1}")
    aug = r.build()
    src = DecodedFile(path, 40)
    with pytest.raises(ShapeChanged):
        aug.view(src, 5, 40)
    fused, applied = aug.view(src, 5, 40)
    old, applied_old = aug.view(resize_short(shown, 40), 5, 40, fused=False)
    assert applied == applied_old  # drawn for the 40x60 portrait working image
    d = np.abs(fused.astype(np.int16) - old.astype(np.int16))[4:-4, 4:-4]
    assert d.mean() <= 4.0


def test_file_errors_name_the_file(tmp_path):
    from augkit.errors import ImageError

    bad = tmp_path / "cut.jpg"
    data = (write(tmp_path / "ok.jpg", make_photo("coffee", (64, 48)))).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg.*truncated"):
        DecodedFile(bad, 32)
    big = write(tmp_path / "big.jpg", make_photo("coffee", (64, 48)))
    with pytest.raises(ImageError, match="big.jpg.*too large"):
        DecodedFile(big, 32, max_pixels=1000)


def test_final_view_matrix_is_resize_and_crop():
    from augkit.recipe.fuse import final_matrix

    img = make_photo("coffee", (90, 60))
    m = final_matrix((60, 90), 30)
    via_warp = cv2.warpAffine(img, m[:2], (30, 30), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    ref = eval_image(cv2.resize(img, (45, 30), interpolation=cv2.INTER_LINEAR), 30)
    assert np.abs(via_warp.astype(int) - ref.astype(int)).max() <= 1


# ====================================================================== offline augment


def test_offline_augment_fuses_and_stays_byte_identical_across_workers(tmp_path):
    import json

    from _imgs import class_folder

    from augkit.offline.run import augment

    src = class_folder(tmp_path / "src", per_class=2, size=(90, 60))
    recipe = _recipe(CLASSIC["affine"])
    outs = []
    for workers in (1, 2):
        dst = tmp_path / f"out{workers}"
        augment(src, dst, recipe, copies=2, workers=workers, format="png")
        outs.append({p.relative_to(dst): p.read_bytes() for p in dst.rglob("*.png")})
    assert outs[0] == outs[1] and len(outs[0]) == 12
    rows = [json.loads(line) for line in (tmp_path / "out1" / "manifest.jsonl").read_text().splitlines()]
    aug = recipe.build()
    differs = 0
    for row in rows:
        img = read_image(src / row["source"])
        written = read_image(tmp_path / "out1" / row["output"])
        assert np.array_equal(written, aug(img, row["sample_seed"])[0])  # the fused pixels
        differs += not np.array_equal(written, aug(img, row["sample_seed"], fused=False)[0])
    assert differs >= len(rows) // 2  # two affine warps: fused, not step by step
