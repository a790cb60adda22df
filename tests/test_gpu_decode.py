"""``augkit train --decode gpu`` (augkit.training.gpu_decode), on the CPU: everything but nvJPEG itself.

The device function runs on CPU tensors (torchvision's ``decode_jpeg`` decodes a list per image there,
libjpeg as OpenCV); the plans must draw exactly what the CPU path draws, and the pixels must be close
to ``Augmenter.view(DecodedFile(...))`` away from the borders. Tolerances (measured on these photos,
20 seeds; stated with each test): a warp that shrinks by less than 2x matches to 1 level almost
everywhere; the colour steps run on the output view (the CPU path runs them on the working image
before its centre crop, so contrast's grey mean differs a little); a shrink by 2x or more is an
average pool on the device where the CPU path decodes at a DCT scale (a few levels on average).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _imgs import photo, write
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from augkit.albu import import_albumentations
from augkit.cli import app
from augkit.errors import ImageError, UsageError
from augkit.io.warped import DecodedFile, ShapeChanged
from augkit.recipe import colour
from augkit.recipe.api import leaf_transforms, load_recipe, parse_recipe
from augkit.training import gpu_decode as gd
from augkit.training.config import TrainConfig
from augkit.training.dataset import AugmentedImageFolder
from augkit.training.loop import train

CPU = torch.device("cpu")
SIZE = 64
RECIPES = {
    "flip": "name: flip\ntrain:\n- flip: {direction: horizontal, p: 0.5}\n- flip: {direction: vertical, p: 0.5}\n",
    "affine-reflect": "name: aff\nborder: reflect\ntrain:\n- flip: {direction: horizontal, p: 0.5}\n"
    "- affine: {scale: [0.8, 1.2], translate: [-0.1, 0.1], rotate: [-20, 20], shear: [-8, 8], p: 1}\n",
    "rotate-constant": "name: rot\nborder: constant\nfill: 40\ntrain:\n- rotate: {degrees: 30, p: 1}\n"
    "- shift: {x: 0.1, y: 0.1, p: 0.8}\n",
    "replicate": "name: rep\nborder: replicate\ntrain:\n- rotate: {degrees: 25, p: 1}\n",
}


def recipe(name: str):
    return load_recipe("default") if name == "default" else parse_recipe(RECIPES[name])


def cpu_view(aug, path: Path, seed: int) -> np.ndarray:
    """What AugmentedImageFolder.load gives with the memory cache off (the CPU path)."""
    src = DecodedFile(path, SIZE)
    try:
        return aug.view(src, seed, SIZE)[0]
    except ShapeChanged:
        return aug.view(src, seed, SIZE)[0]


def device_view(planner: gd.Planner, path: Path, seed: int) -> np.ndarray:
    batch, _ = gd.collate([(planner.plan(str(path), seed), 0)])
    out = gd.DeviceDecoder(planner.spec, SIZE)(batch, CPU)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, SIZE, SIZE)
    return out[0].permute(1, 2, 0).numpy()


def diff_stats(a: np.ndarray, b: np.ndarray, margin: int = 8) -> tuple[float, float]:
    d = np.abs(a.astype(int) - b.astype(int))[margin : SIZE - margin, margin : SIZE - margin]
    return float(d.mean()), float(np.percentile(d, 99))


def same_params(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu_decode")
    return {
        "small": write(root / "cat.jpg", photo("chelsea", (100, 75))),  # 100x75 -> 64: shrinks < 2x
        "tall": write(root / "astro.jpg", photo("astronaut", (70, 96))),
        "large": write(root / "coffee.jpg", photo("coffee", (451, 300))),  # -> 64: 4.7x (pooled / DCT-scaled)
    }


# ---------------------------------------------------------------------- (a) the draws are the CPU path's


@pytest.mark.parametrize("name", ["default", "affine-reflect", "rotate-constant"])
def test_plan_draws_exactly_what_the_cpu_path_draws(jpegs, name):
    r = recipe(name)
    aug, planner = r.build(), gd.Planner(r, SIZE, max_pixels=None)
    applied = 0
    for path in (jpegs["small"], jpegs["large"]):
        for seed in range(12):
            cpu_view(aug, path, seed)
            planner.plan(str(path), seed)
            cpu = [dict(t.params) for t in leaf_transforms(aug.compose)]
            dev = [dict(t.params) for t in leaf_transforms(planner.compose)]
            assert len(cpu) == len(dev)
            assert all(same_params(a, b) for a, b in zip(cpu, dev)), (path, seed)
            applied += sum(bool(p) for p in cpu)
    assert applied > 12  # steps were drawn, not all skipped


def test_plan_params_rows_hold_the_draws(jpegs):
    r = recipe("default")
    planner = gd.Planner(r, SIZE, max_pixels=None)
    assert planner.spec.slots == (gd.COLOR, gd.LINEAR, gd.BLUR)
    seen = set()
    for seed in range(40):
        p = planner.plan(str(jpegs["small"]), seed)
        leaves = {type(t): t for t in leaf_transforms(planner.compose)}
        cj = leaves[colour.ColorJitter].params
        assert p.params[0, 0] == (1.0 if cj else 0.0)
        if cj:
            assert list(p.params[0, 5:9]) == list(cj["order"])
            assert p.params[0, 1] == cj["brightness"]
            seen.add("color")
        if p.params[2, 0]:
            kernel = leaves[type(leaf_transforms(planner.compose)[-1])].params["kernel"]
            assert int(p.params[2, 1]) == len(kernel)
            np.testing.assert_array_equal(p.params[2, 2 : 2 + len(kernel)], kernel)
            seen.add("blur")
    assert seen == {"color", "blur"}


# ---------------------------------------------------------------------- (b) the pixels


@pytest.mark.parametrize(
    "name, mean_tol, p99_tol",
    [
        ("flip", 0.05, 0),  # measured: 0.003 (a handful of pixels 1 off: float vs OpenCV's fixed point)
        ("affine-reflect", 0.05, 1),  # measured: <= 0.001
        ("rotate-constant", 0.05, 1),
        ("replicate", 0.05, 1),
        ("default", 1.0, 4),  # measured: <= 0.42 mean, 99th percentile 2 (colour on the view, not the working image)
    ],
)
def test_device_pixels_match_the_cpu_path_away_from_the_borders(jpegs, name, mean_tol, p99_tol):
    r = recipe(name)
    aug, planner = r.build(), gd.Planner(r, SIZE, max_pixels=None)
    for path in (jpegs["small"], jpegs["tall"]):
        for seed in range(8):
            mean, p99 = diff_stats(device_view(planner, path, seed), cpu_view(aug, path, seed))
            assert mean <= mean_tol and p99 <= p99_tol, (path.name, seed, mean, p99)


def test_a_large_downscale_is_pooled_and_stays_close(jpegs):
    """4.7x: the device averages 4x4 blocks where the CPU path decodes at 1/4 (DCT); measured mean
    1.4-2.7 levels, 99th percentile 12-21 (edges in the coffee photo), same picture and geometry.
    Against the CPU path without DCT scaling (full decode, area shrink): mean 0.2-1.5."""
    r = recipe("affine-reflect")
    aug, planner = r.build(), gd.Planner(r, SIZE, max_pixels=None)
    assert planner.plan(str(jpegs["large"]), 0).shrink == 4
    for seed in range(4):
        mean, p99 = diff_stats(device_view(planner, jpegs["large"], seed), cpu_view(aug, jpegs["large"], seed))
        assert mean <= 4.0 and p99 <= 25, (seed, mean, p99)


def test_borders_within_each_pictures_own_extent(jpegs):
    """Zoomed out (scale 0.7) so a wide border shows: constant is the fill, reflect/replicate match
    OpenCV's over the WHOLE view (borders included), and a picture batched with a larger one (padded)
    gives the same pixels as alone: its border never reads the padding."""
    text = "name: s\nborder: {b}\nfill: 200\ntrain:\n- affine: {{scale: [0.7, 0.7], p: 1}}\n"
    for border in ("constant", "reflect", "replicate"):
        r = parse_recipe(text.format(b=border))
        planner = gd.Planner(r, SIZE, max_pixels=None)
        decoder = gd.DeviceDecoder(planner.spec, SIZE)
        small = planner.plan(str(jpegs["small"]), 0)
        alone = decoder(gd.collate([(small, 0)])[0], CPU)
        batched = decoder(gd.collate([(small, 0), (planner.plan(str(jpegs["large"]), 0), 1)])[0], CPU)
        assert torch.equal(alone[0], batched[0]), border
        ref = cpu_view(r.build(), jpegs["small"], 0)
        mean, p99 = diff_stats(alone[0].permute(1, 2, 0).numpy(), ref, margin=0)
        assert mean <= 0.05 and p99 <= 1, (border, mean, p99)
        if border == "constant":
            assert torch.all(alone[0, :, :3, :3] == 200)


def test_colour_ops_equal_colour_py_on_the_same_pixels():
    """The device colour steps against augkit's CPU colour code on one image. linear, brightness and
    contrast: exact. saturation: float32 rounding, 1 level on a few pixels. hue: OpenCV's HSV -> RGB
    truncates runs of 64 pixels (vectorised) and rounds the rest of a row (scalar); the device truncates,
    so on this 48-pixel-wide image 1 level on about a third of the pixels, which later steps in the
    order can carry further (measured: mean 0.28, max 3)."""
    img = photo("astronaut", (48, 48))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    rng = np.random.default_rng(0)
    means, worst = [], 0
    for k in range(30):
        b, c, s = rng.uniform(0.5, 1.5, 3)
        h = rng.uniform(-0.1, 0.1)
        c = 0.0 if k == 0 else c
        order = [int(v) for v in rng.permutation(4)]
        ref = colour.color_jitter(img.copy(), b, c, s, h, order).astype(int)
        f = torch.tensor([[b, c, s, h]], dtype=torch.float64)
        out = gd.color_jitter(x.clone(), f, torch.tensor([order]))[0].permute(1, 2, 0).numpy()
        d = np.abs(out - ref)
        means.append(d.mean())
        worst = max(worst, d.max())
        no_hue = colour.color_jitter(img.copy(), b, c, 1.0, 0.0, order)
        f_no_hue = torch.tensor([[b, c, 1.0, 0.0]], dtype=torch.float64)
        np.testing.assert_array_equal(
            gd.color_jitter(x.clone(), f_no_hue, torch.tensor([order]))[0].permute(1, 2, 0).numpy(), no_hue
        )
        a, beta = rng.uniform(0.5, 1.5), rng.uniform(-40, 40)
        lin = gd.multiply_add(x.clone(), torch.tensor([a]), torch.tensor([beta]))[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(lin, colour.RandomBrightnessContrast(p=1).apply(img, a, beta))
    assert np.mean(means) < 0.5 and worst <= 4, (np.mean(means), worst)


def test_gaussian_blur_matches_albumentations():
    """Per-sample kernels of different lengths in one batch; 1 level on a few pixels (float rounding)."""
    A = import_albumentations()
    from albumentations.augmentations.blur.functional import create_gaussian_kernel_1d

    imgs = [photo("chelsea", (40, 40)), photo("coffee", (40, 40))]
    kernels = [create_gaussian_kernel_1d(0.8, 3), create_gaussian_kernel_1d(2.5, 7)]
    x = torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in imgs]).float()
    taps = torch.zeros((2, 7), dtype=torch.float64)
    for i, k in enumerate(kernels):
        taps[i, : len(k)] = torch.from_numpy(k)
    out = gd.gaussian_blur(x, torch.tensor([3, 7]), taps)
    for i in range(2):
        ref = A.GaussianBlur(p=1).apply(imgs[i], kernel=kernels[i]).astype(int)
        d = np.abs(out[i].permute(1, 2, 0).numpy() - ref)
        assert d.max() <= 1 and (d > 0).mean() < 0.01


# ---------------------------------------------------------------------- (c) reproducible


def test_same_seed_same_tensors_at_0_and_2_workers(tmp_path):
    for i, name in enumerate(("chelsea", "coffee", "astronaut")):
        for j in range(2):
            write(tmp_path / "data" / name / f"{j}.jpg", photo(name, (90, 70), offset=j + i))
    folder = AugmentedImageFolder(tmp_path / "data", "default", image_size=SIZE, output="uint8", seed=5)
    plans = gd.GpuDecodeFolder(folder)
    decoder = gd.DeviceDecoder(plans.spec, SIZE)

    def run(workers: int) -> torch.Tensor:
        loader = DataLoader(plans, batch_size=4, num_workers=workers, collate_fn=gd.collate)
        return torch.cat([decoder(x, CPU) for x, _ in loader])

    first = run(0)
    assert torch.equal(first, run(0))
    assert torch.equal(first, run(2))
    folder.set_epoch(1)  # another epoch: other draws (the shared epoch reaches the plan view)
    assert not torch.equal(first, run(0))


# ---------------------------------------------------------------------- (d) refused up front, exit 2


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decode_data")
    for name in ("chelsea", "coffee"):
        for j in range(3):
            write(root / name / f"{j}.jpg", photo(name, (48, 40), offset=j))
    return root


def invoke(*args) -> object:
    return CliRunner().invoke(app, ["train", *map(str, args)])


def test_an_unsupported_recipe_exits_2_naming_the_step(data_folder, tmp_path):
    res = invoke(data_folder, "-o", tmp_path / "run", "--decode", "gpu", "--recipe", "trivial", "--weights", "none")
    assert res.exit_code == 2, res.output
    assert "--decode gpu cannot run recipe 'trivial'" in res.output and "trivial_augment" in res.output
    assert "use --decode cpu" in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, why",
    [
        ("- color: {p: 1}\n- flip: {direction: horizontal}\n", "a geometric step after the pixel step"),
        ("- rotate: {degrees: 10, border: wrap}\n", "border mode 3"),
        ("- rotate: {degrees: 10, border: constant}\n- shift: {x: 0.1, y: 0.1}\n", "a border or fill different"),
        ("- albumentations: {transform: MedianBlur, blur_limit: 3}\n", "MedianBlur has no device implementation"),
    ],
)
def test_check_recipe_refuses_what_the_device_cannot_run(text, why):
    with pytest.raises(UsageError, match="--decode gpu cannot run") as err:
        gd.check_recipe(parse_recipe("name: x\ntrain:\n" + text))
    assert why in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_no_cuda_exits_2(data_folder, tmp_path):
    res = invoke(data_folder, "-o", tmp_path / "run", "--decode", "gpu", "--weights", "none")
    assert res.exit_code == 2, res.output
    assert "--decode gpu needs a CUDA device (torch.cuda.is_available() is False); use --decode cpu" in res.output


def test_decode_gpu_with_cache_exits_2(data_folder, tmp_path):
    res = invoke(data_folder, "-o", tmp_path / "run", "--decode", "gpu", "--cache", "--weights", "none")
    assert res.exit_code == 2, res.output
    assert "--decode gpu with --cache" in res.output


# ---------------------------------------------------------------------- (e) other files, EXIF


def test_a_png_among_jpegs_is_decoded_on_the_worker_and_warped_on_the_device(tmp_path):
    png = write(tmp_path / "cat.png", photo("chelsea", (100, 75)))
    r = recipe("affine-reflect")
    planner = gd.Planner(r, SIZE, max_pixels=None)
    plan = planner.plan(str(png), 3)
    assert plan.payload.shape == (3, 75, 100)  # pixels, not bytes
    for seed in range(4):
        mean, p99 = diff_stats(device_view(planner, png, seed), cpu_view(r.build(), png, seed))
        assert mean <= 0.05 and p99 <= 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_folded_into_the_matrix(tmp_path, orientation):
    """nvJPEG ignores EXIF: the plan turns the picture as augkit's decode policy (OpenCV) does."""
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo("astronaut", (100, 72))).save(path, quality=95, exif=exif)
    assert gd.exif_orientation(path.read_bytes()) == orientation
    r = recipe("affine-reflect")
    planner = gd.Planner(r, SIZE, max_pixels=None)
    for seed in range(3):
        mean, p99 = diff_stats(device_view(planner, path, seed), cpu_view(r.build(), path, seed))
        assert mean <= 0.1 and p99 <= 1, (seed, mean, p99)


def test_bytes_no_decoder_takes_are_an_image_error_naming_the_file(jpegs):
    """A batch the decoder refuses is decoded image by image; the image that fails names its file."""
    good = gd.Planner(None, SIZE, max_pixels=None).plan(str(jpegs["small"]), 0)
    junk = torch.from_numpy(np.frombuffer(b"\xff\xd8\xff\xe0" + bytes(200), np.uint8).copy())
    batch = gd.PlannedBatch(
        [good.payload, junk],
        torch.from_numpy(np.stack([good.matrix] * 2)),
        torch.ones(2, dtype=torch.int64),
        torch.zeros((2, 0, gd.DeviceSpec().width), dtype=torch.float64),
        [good.path, "/data/cat/broken.jpg"],
    )
    with pytest.raises(ImageError, match="broken.jpg: not decoded"):
        gd.DeviceDecoder(gd.DeviceSpec(), SIZE)(batch, CPU)


# ---------------------------------------------------------------------- the whole run (device check bypassed)


def test_train_with_decode_gpu_runs_end_to_end_on_cpu_tensors(data_folder, tmp_path, monkeypatch):
    """The loop's hand-off: plans from the workers, pixels made by the prefetcher (here on the CPU,
    the CUDA check patched out), validation on the CPU path; settings.yaml says how it was fed."""
    calls = []
    real = gd.DeviceDecoder.__call__

    def counted(self, batch, device):
        calls.append(len(batch))
        return real(self, batch, device)

    monkeypatch.setattr(gd, "check_device", lambda device: None)
    monkeypatch.setattr(gd.DeviceDecoder, "__call__", counted)
    cfg = TrainConfig(
        data=data_folder, out=tmp_path / "run", weights="none", epochs=1, batch_size=2, image_size=32,
        workers=0, threads=1, device="cpu", val_split=0.34, progress=False, decode="gpu",
    )  # fmt: skip
    result = train(cfg)
    assert result.epochs == 1
    assert sum(calls) == 4  # the 4 training images, all through the device path; validation never
    settings = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())
    assert settings["augkit_train"]["decode"] == "gpu"
    assert "nvJPEG" in settings["resolved"]["decode"]


# ---------------------------------------------------------------------- on a CUDA machine only (skipped in CI)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")


@needs_cuda
def test_nvjpeg_batch_is_close_to_the_cpu_path_and_reproducible(jpegs):
    """nvJPEG's decode differs from libjpeg's (IDCT, chroma upsampling): the tolerance here is a guess
    (no GPU was available when it was written), looser than the CPU-decoded one above."""
    from augkit.training.prefetch import Prefetcher

    cuda = torch.device("cuda")
    r = recipe("default")
    aug, planner = r.build(), gd.Planner(r, SIZE, max_pixels=None)
    decoder = gd.DeviceDecoder(planner.spec, SIZE)
    paths = [jpegs["small"], jpegs["tall"], jpegs["large"]] * 3
    plans = [(planner.plan(str(p), seed), 0) for seed, p in enumerate(paths)]
    batch = gd.collate(plans)[0]
    out = decoder(batch, cuda)
    assert out.device.type == "cuda" and out.dtype == torch.uint8
    assert torch.equal(out, decoder(batch, cuda))  # the same tensors twice on one device
    for i, (seed, p) in enumerate(enumerate(paths)):
        mean, p99 = diff_stats(out[i].permute(1, 2, 0).cpu().numpy(), cpu_view(aug, p, seed))
        assert mean <= 5.0 and p99 <= 30, (p.name, seed, mean, p99)
    # through the prefetcher's side stream, as training runs it
    feed = Prefetcher(cuda, decode=decoder)
    got = [b.images for b in feed([(batch, torch.zeros(len(batch), dtype=torch.int64))] * 2)]
    assert len(got) == 2 and torch.equal(got[0], got[1])
