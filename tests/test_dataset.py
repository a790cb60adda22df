"""AugmentedImageFolder: a drop-in for torchvision's ImageFolder, with per-sample seeded augmentation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _digits import digit_images, digits_folder, write_png
from _imgs import class_folder, photo, write
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from augkit.errors import ImageError, UsageError
from augkit.io.images import opencv_threads, read_image
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, eval_image
from augkit.seeding import derive_seed
from augkit.training.cache import ImageCache
from augkit.training.dataset import AugmentedImageFolder


@pytest.fixture(scope="module")
def nested(tmp_path_factory) -> Path:
    """Classes in unsorted creation order, a name with a space, nested folders at two depths."""
    root = tmp_path_factory.mktemp("nested")
    digits_folder(root, digits=(2, 0), per_class=3)
    imgs = digit_images(1, 6)
    for rel, img in zip(
        [
            "one b/x.png",
            "one b/sub/a.png",
            "one b/sub 2/b.jpg",
            "one b/sub/deeper/c.png",
            "one b/a.png",
            "one b/sub-x/d.png",
        ],
        imgs,
    ):
        write_png(root / rel, img)
    return root


@pytest.fixture(scope="module")
def same_image(tmp_path_factory) -> Path:
    """Eight copies of one digit: identical inputs, so any repeated augmentation would show."""
    root = tmp_path_factory.mktemp("same")
    img = digit_images(3, 1)[0]
    for i in range(8):
        write_png(root / ("a" if i < 4 else "b") / f"copy{i}.png", img)
    return root


def test_same_classes_indices_and_order_as_imagefolder(nested):
    ours, tv = AugmentedImageFolder(nested), ImageFolder(nested)
    assert ours.classes == tv.classes == ["d0", "d2", "one b"]
    assert ours.class_to_idx == tv.class_to_idx
    assert ours.samples == tv.samples
    assert ours.targets == tv.targets
    assert ours.imgs == tv.imgs
    assert len(ours) == len(tv) == 12
    assert ours.errors == []


def test_str_and_path_roots_give_the_same_samples(nested):
    assert AugmentedImageFolder(str(nested) + "/").samples == ImageFolder(str(nested) + "/").samples
    assert AugmentedImageFolder(nested).samples == ImageFolder(str(nested)).samples


def test_hidden_files_and_os_litter_are_ignored_unlike_imagefolder(nested, tmp_path):
    root = tmp_path / "litter"
    shutil.copytree(nested, root)
    img = digit_images(5, 1)[0]
    write_png(root / "d0" / "._0_00.png", img)  # AppleDouble
    write_png(root / "d0" / ".ipynb_checkpoints" / "x.png", img)
    (root / "d2" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "d2" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "d2" / "notes.txt").write_text("not an image")
    write_png(root / "loose.png", img)  # beside the class folders: not a sample (as in ImageFolder)
    ours, tv = AugmentedImageFolder(root), ImageFolder(root)
    assert ours.classes == tv.classes
    hidden = [s for s in tv.samples if "/." in s[0]]
    assert len(hidden) == 2  # ImageFolder loads ._0_00.png and .ipynb_checkpoints/x.png as digits
    assert ours.samples == [s for s in tv.samples if s not in hidden]
    assert {"d0/._0_00.png", "d2/.DS_Store", "d2/Thumbs.db", "d2/notes.txt", "loose.png"} <= set(ours.ignored)


def test_uint8_without_recipe_is_the_prediction_view(nested):
    ds = AugmentedImageFolder(nested, image_size=24, output="uint8")
    x, y = ds[4]
    path, target = ds.samples[4]
    assert y == target and x.dtype == torch.uint8 and x.shape == (3, 24, 24)
    assert np.array_equal(x.permute(1, 2, 0).numpy(), eval_image(read_image(path), 24))


def test_float_output_is_normalized(nested):
    u = AugmentedImageFolder(nested, image_size=24, output="uint8")[0][0]
    f = AugmentedImageFolder(nested, image_size=24)[0][0]
    raw = AugmentedImageFolder(nested, image_size=24, normalize=False)[0][0]
    assert f.dtype == torch.float32 and f.shape == (3, 24, 24)
    assert torch.allclose(raw, u.float() / 255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(f, (u.float() / 255 - mean) / std, atol=1e-6)


def test_wraps_a_list_of_path_label_pairs(nested):
    tv = ImageFolder(nested)
    ds = AugmentedImageFolder(tv.samples, "digits", image_size=24, classes=tv.classes)
    assert ds.samples == tv.samples and ds.classes == tv.classes and len(ds) == len(tv)
    assert ds[0][0].shape == (3, 24, 24)
    assert AugmentedImageFolder(tv.samples[:2]).classes == ["0"]
    with pytest.raises(UsageError, match="label 2 has no class name"):
        AugmentedImageFolder(tv.samples, classes=["a", "b"])


def test_recipe_changes_pixels_reproducibly_and_per_epoch(nested):
    ds = AugmentedImageFolder(nested, "digits", image_size=32, seed=7, output="uint8")
    plain = AugmentedImageFolder(nested, None, image_size=32, output="uint8")
    a0 = torch.stack([ds[i][0] for i in range(len(ds))])
    again = AugmentedImageFolder(nested, "digits", image_size=32, seed=7, output="uint8")
    assert torch.equal(a0, torch.stack([again[i][0] for i in range(len(ds))]))
    assert not torch.equal(a0, torch.stack([plain[i][0] for i in range(len(ds))]))
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert not torch.equal(a0, torch.stack([ds[i][0] for i in range(len(ds))]))
    assert ds.sample_seed(3) == derive_seed(7, ds.keys[3], 1, salt="train")
    assert ds.keys[3] == Path(ds.samples[3][0]).relative_to(nested).as_posix()


def _epoch(ds, workers: int, epoch: int, persistent_loader=None) -> torch.Tensor:
    ds.set_epoch(epoch)
    loader = persistent_loader or DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
    return torch.cat([x for x, _ in loader])


def test_workers_give_the_same_samples_and_never_repeat_each_other(same_image):
    ds = AugmentedImageFolder(same_image, "default", image_size=32, seed=3, output="uint8")
    e0_w0, e0_w2 = _epoch(ds, 0, 0), _epoch(ds, 2, 0)
    e1_w0, e1_w2 = _epoch(ds, 0, 1), _epoch(ds, 2, 1)
    assert torch.equal(e0_w0, e0_w2)  # the worker count does not change any sample
    assert torch.equal(e1_w0, e1_w2)
    every = torch.cat([e0_w2, e1_w2]).flatten(1)
    # 16 augmentations of one identical image (8 files x 2 epochs): no two are the same,
    # so neither workers nor epochs repeat each other's random streams
    assert len({tuple(row.tolist()) for row in every}) == len(every) == 16


def test_set_epoch_reaches_persistent_workers(same_image):
    ds = AugmentedImageFolder(same_image, "default", image_size=32, seed=3, output="uint8")
    loader = DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True)
    first, second = _epoch(ds, 2, 0, loader), _epoch(ds, 2, 1, loader)
    assert torch.equal(first, _epoch(ds, 0, 0))
    assert torch.equal(second, _epoch(ds, 0, 1))


def test_subset_keeps_keys_and_can_drop_the_recipe(nested):
    ds = AugmentedImageFolder(nested, "digits", image_size=24, output="uint8")
    sub = ds.subset([5, 1], recipe=None)
    assert sub.samples == [ds.samples[5], ds.samples[1]] and sub.keys == [ds.keys[5], ds.keys[1]]
    assert sub.recipe is None and ds.recipe is not None and sub.classes == ds.classes
    aug = ds.subset([5])
    assert torch.equal(aug[0][0], ds[5][0])


# ------------------------------------------------------------------ bad data: reported at scan time


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    root = digits_folder(tmp_path / "bad", digits=(0, 1), per_class=3)
    jpeg = (root / "d0" / "0_01.jpg").read_bytes()
    (root / "d0" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "d0" / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes())
    (root / "d1" / "empty.png").write_bytes(b"")
    (root / "d1" / "text.png").write_text("hello, I am text")
    png = (root / "d1" / "1_00.png").read_bytes()
    (root / "d1" / "png_named.jpg").write_bytes(png)  # decoded by content: fine
    return root


def test_unreadable_files_are_reported_at_scan_not_mid_epoch(bad_folder):
    ds = AugmentedImageFolder(bad_folder, "digits", image_size=24)
    reasons = {Path(e.path).name: e.reason for e in ds.errors}
    assert reasons == {
        "truncated.jpg": "truncated",
        "random.jpg": "not an image",
        "empty.png": "not an image",
        "text.png": "not an image",
    }
    assert all(isinstance(e, ImageError) and str(bad_folder) in str(e) for e in ds.errors)
    assert ds.classes == ImageFolder(bad_folder).classes
    assert len(ds) == 7  # 3 + 3 good ones and the PNG named .jpg
    for i in range(len(ds)):  # a whole epoch without an exception
        assert ds[i][0].shape == (3, 24, 24)


def test_full_check_and_no_check(bad_folder):
    full = AugmentedImageFolder(bad_folder, check="full")
    assert sorted(Path(e.path).name for e in full.errors) == ["empty.png", "random.jpg", "text.png", "truncated.jpg"]
    trusting = AugmentedImageFolder(bad_folder, check="none")
    assert len(trusting) == 11 and trusting.errors == []
    bad = next(i for i, (p, _) in enumerate(trusting.samples) if p.endswith("truncated.jpg"))
    with pytest.raises(ImageError, match="truncated.jpg: truncated"):
        trusting[bad]


def test_file_removed_after_scan_names_the_file(nested, tmp_path):
    root = tmp_path / "gone"
    shutil.copytree(nested, root)
    ds = AugmentedImageFolder(root)
    Path(ds.samples[0][0]).unlink()
    with pytest.raises(ImageError, match="not found"):
        ds[0]


def test_empty_class_and_no_classes_are_errors(tmp_path):
    root = digits_folder(tmp_path / "e", digits=(0,), per_class=2)
    (root / "d9").mkdir()
    (root / "d9" / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="class folder.*no images: d9"):
        AugmentedImageFolder(root)
    flat = tmp_path / "flat"
    write_png(flat / "a.png", digit_images(0, 1)[0])
    with pytest.raises(UsageError, match="no class folders"):
        AugmentedImageFolder(flat)


def test_fixed_classes_for_a_validation_folder(nested, tmp_path):
    val = digits_folder(tmp_path / "val", digits=(2,), per_class=2)
    ds = AugmentedImageFolder(val, classes=["d0", "d2", "one b"])
    assert ds.class_to_idx["d2"] == 1 and set(ds.targets) == {1}
    with pytest.raises(UsageError, match="not among the 2 known classes: d2"):
        AugmentedImageFolder(val, classes=["d0", "d1"])


def test_bad_options_are_usage_errors(nested):
    with pytest.raises(UsageError, match="output 'int8'"):
        AugmentedImageFolder(nested, output="int8")
    with pytest.raises(UsageError, match="check 'deep'"):
        AugmentedImageFolder(nested, check="deep")
    with pytest.raises(UsageError, match="unknown recipe 'digts'.*digits"):
        AugmentedImageFolder(nested, "digts")


# ------------------------------------------------------------------ hostile files: found at construction, no hang


def test_fifo_and_dev_zero_link_are_reported_at_construction(tmp_path):
    root = digits_folder(tmp_path / "d", digits=(0, 1), per_class=2)
    os.mkfifo(root / "d0" / "fifo.jpg")  # opening it for reading would block forever
    (root / "d1" / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    for check in ("header", "full"):
        ds = AugmentedImageFolder(root, "digits", image_size=16, check=check)
        reasons = {Path(e.path).name: e.reason for e in ds.errors}
        assert reasons == {"fifo.jpg": "not a regular file", "zero.jpg": "not a regular file"}, check
        assert len(ds) == 4 and all(ds[i][0].shape == (3, 16, 16) for i in range(len(ds)))


def test_extreme_aspect_ratio_is_found_at_construction_not_mid_epoch(tmp_path):
    root = digits_folder(tmp_path / "d", digits=(0, 1), per_class=2)
    strip = np.full((1, 3_000_000), 128, np.uint8)
    ok, buf = cv2.imencode(".tif", strip)
    assert ok
    (root / "d0" / "strip.tif").write_bytes(buf.tobytes())
    ds = AugmentedImageFolder(root, "digits", image_size=16)
    assert {Path(e.path).name: e.reason for e in ds.errors} == {"strip.tif": "bad dimensions"}
    assert [ds[i][0].shape for i in range(len(ds))] == [(3, 16, 16)] * 4


# ------------------------------------------------------------------ decoding at the size needed, and the cache


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (scikit-image) as 240x180 JPEGs and a PNG: big enough for a 1/4 JPEG reduction at 32 px."""
    return class_folder(tmp_path_factory.mktemp("photos"), per_class=2, classes=("cat", "coffee"), size=(240, 180))


def test_jpegs_are_decoded_at_reduced_size_close_to_a_full_decode(photos):
    ds = AugmentedImageFolder(photos, None, image_size=32, output="uint8")
    jpg = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith(".jpg"))
    path = ds.samples[jpg][0]
    reduced = ds.decode(path)
    assert 64 <= min(reduced.shape[:2]) <= 180 // 2  # 1/2 scale: the largest that keeps 2 x 32 px (policy v3)
    full = eval_image(read_image(path, reduced=False), 32).astype(int)
    assert np.abs(ds[jpg][0].permute(1, 2, 0).numpy().astype(int) - full).mean() < 4


def _epochs(ds, epochs=(0, 1), workers=0) -> list[torch.Tensor]:
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out += [x for x, _ in DataLoader(ds, batch_size=3, num_workers=workers)]
    return out


def test_cache_gives_the_same_tensors_as_decoding(photos, tmp_path):
    plain = AugmentedImageFolder(photos, "default", image_size=32, seed=4)
    cached = AugmentedImageFolder(photos, "default", image_size=32, seed=4, cache=tmp_path / "cache")
    assert cached.cache is not None and all(p in cached.cache for p, _ in cached.samples)
    assert (tmp_path / "cache" / "pixels.u8").stat().st_size > 0
    with opencv_threads(1):  # before workers fork, as augkit train does
        got = _epochs(cached, workers=2)  # each worker maps the store itself
    want = _epochs(plain)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_cache_decodes_a_changed_file_again_and_keeps_the_others(photos, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(photos, root)
    notes: list[str] = []
    first = AugmentedImageFolder(root, None, image_size=32, cache=ImageCache(tmp_path / "c", 32, on_note=notes.append))
    assert "0 of 4 images already decoded; adding 4" in notes[-1]
    changed = Path(first.samples[0][0])
    write(changed, photo("rocket", (240, 180)))  # same name, new content
    again = AugmentedImageFolder(root, None, image_size=32, cache=ImageCache(tmp_path / "c", 32, on_note=notes.append))
    assert "3 of 4 images already decoded; adding 1" in notes[-1]
    fresh = AugmentedImageFolder(root, None, image_size=32)
    assert all(torch.equal(again[i][0], fresh[i][0]) for i in range(len(fresh)))
    assert not torch.equal(again[0][0], first[0][0])


def test_cache_that_does_not_fit_is_refused_before_building(photos, tmp_path, monkeypatch):
    import augkit.training.cache as cache_mod

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1000))
    with pytest.raises(UsageError, match="needs about .* but the disk has"):
        AugmentedImageFolder(photos, None, image_size=32, cache=tmp_path / "c")
    assert not (tmp_path / "c" / "pixels.u8").exists()


def test_small_datasets_are_decoded_once_per_process(nested, monkeypatch):
    import augkit.training.dataset as dataset_mod

    calls = []
    real = dataset_mod.read_image
    monkeypatch.setattr(dataset_mod, "read_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    # fused=False: step by step, the memo changes nothing; fused, memory_cache=0 warps straight from the
    # file instead (close, not equal: tests/test_fuse.py)
    ds = AugmentedImageFolder(nested, "digits", image_size=24, seed=2, fused=False)
    off = AugmentedImageFolder(nested, "digits", image_size=24, seed=2, memory_cache=0, fused=False)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        off.set_epoch(epoch)
        assert all(torch.equal(ds[i][0], off[i][0]) for i in range(len(ds)))  # the same tensors
    assert len(calls) == len(ds) + 2 * len(off)  # memoised: once; without: every epoch
