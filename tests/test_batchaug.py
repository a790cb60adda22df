"""Batch-level augmentation (mixup, cutmix): soft targets match the sampled lambda, the pixels match
the targets, one seed decides every batch (at any worker count), and the recipe section is strict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _digits import digit_images
from typer.testing import CliRunner

from augkit import cli
from augkit.errors import RecipeError
from augkit.recipe.api import parse_recipe
from augkit.recipe.batchspec import BatchSpec
from augkit.training.mixing import BatchAugment, MixupCollate, one_hot_smooth, soft_target_cross_entropy

K = 10


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 real digits (two each of 0-3), uint8 (N, 3, 32, 32), and their labels."""
    imgs, labels = [], []
    for d in range(4):
        imgs += digit_images(d, 2)
        labels += [d, d]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


def aug(mixup=None, cutmix=None, p=1.0, switch=0.5, seed=0, eps=0.0) -> BatchAugment:
    return BatchAugment(BatchSpec(mixup, cutmix, p, switch), K, seed, label_smoothing=eps)


def onehot(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(t, K).float()


def test_mixup_targets_and_pixels_follow_lambda(batch):
    x, t = batch
    lams = []
    for step in range(6):
        out, y, info = aug(mixup=0.4)(x, t, epoch=1, step=step)
        lam = info["lam"]
        lams.append(lam)
        assert info["op"] == "mixup" and out.dtype == torch.float32
        assert torch.allclose(y, lam * onehot(t) + (1 - lam) * onehot(t.roll(1)), atol=1e-6)
        assert torch.allclose(y.sum(1), torch.ones(len(t)))
        assert torch.allclose(out, lam * x.float() + (1 - lam) * x.roll(1, 0).float(), atol=1e-4)
    assert len(set(lams)) == 6 and all(0 <= v <= 1 for v in lams)


def test_cutmix_pasted_share_equals_one_minus_lambda(batch):
    x, t = batch
    xf, other = x.float(), x.roll(1, 0).float()
    for step in range(8):
        out, y, info = aug(cutmix=1.0)(x, t, epoch=0, step=step)
        y0, y1, x0, x1 = info["box"]
        inside = torch.zeros(x.shape[-2:], dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(out[:, :, inside], other[:, :, inside])
        assert torch.equal(out[:, :, ~inside], xf[:, :, ~inside])
        assert inside.float().mean().item() == pytest.approx(1 - info["lam"])
        assert torch.allclose(y, info["lam"] * onehot(t) + (1 - info["lam"]) * onehot(t.roll(1)), atol=1e-6)


def test_switch_prob_picks_both_kinds_and_p0_leaves_batches_alone(batch):
    x, t = batch
    ops = [aug(mixup=0.2, cutmix=1.0)(x, t, epoch=0, step=s)[2]["op"] for s in range(40)]
    assert {"mixup", "cutmix"} == set(ops)
    only_cutmix = aug(mixup=0.2, cutmix=1.0, switch=1.0)
    assert [only_cutmix(x, t, epoch=0, step=s)[2]["op"] for s in range(10)] == ["cutmix"] * 10
    for s in range(5):
        out, y, info = aug(mixup=0.2, cutmix=1.0, p=0.0)(x, t, epoch=0, step=s)
        assert info["op"] == "none" and torch.equal(out, x.float()) and torch.equal(y, onehot(t))


def test_label_smoothing_and_soft_cross_entropy(batch):
    x, t = batch
    y = one_hot_smooth(t, K, 0.1)
    assert torch.allclose(y.sum(1), torch.ones(len(t)))
    assert y[0, t[0]].item() == pytest.approx(0.91) and y[0, (t[0] + 1) % K].item() == pytest.approx(0.01)
    _, ym, _ = aug(mixup=0.2, eps=0.1)(x, t, epoch=0, step=0)
    assert torch.allclose(ym.sum(1), torch.ones(len(t)))
    logits = torch.randn(len(t), K, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.cross_entropy(logits, t, label_smoothing=0.1)
    assert soft_target_cross_entropy(logits, y).item() == pytest.approx(ref.item(), rel=1e-5)


def test_same_seed_same_batches_and_no_global_rng(batch):
    x, t = batch
    torch.manual_seed(1)
    np.random.seed(1)
    a = [aug(mixup=0.2, cutmix=1.0, seed=7)(x, t, epoch=2, step=s) for s in range(4)]
    torch.manual_seed(2)
    np.random.seed(2)
    b = [aug(mixup=0.2, cutmix=1.0, seed=7)(x, t, epoch=2, step=s) for s in range(4)]
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ia == ib
    c = aug(mixup=0.2, cutmix=1.0, seed=8)(x, t, epoch=2, step=0)
    d = aug(mixup=0.2, cutmix=1.0, seed=7)(x, t, epoch=3, step=0)
    assert c[2] != a[0][2] and d[2] != a[0][2]


class _Digits(torch.utils.data.Dataset):
    def __init__(self, x, t):
        self.x, self.t = x, t

    def __len__(self):
        return len(self.t)

    def __getitem__(self, i):
        return self.x[i], self.t[i]


def _batches(collate: MixupCollate, ds, workers: int, epoch: int) -> list:
    collate.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=2,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="fork" if workers else None,
    )
    return list(loader)


def test_collate_and_iterate_do_not_depend_on_worker_count(batch):
    x, t = batch
    ds = _Digits(x, t)
    ba = aug(mixup=0.3, cutmix=1.0, seed=3)
    ref = [ba(x[i : i + 2], t[i : i + 2], epoch=1, step=i // 2) for i in range(0, len(t), 2)]
    for workers in (0, 2):
        got = _batches(MixupCollate(ba), ds, workers, epoch=1)
        assert len(got) == len(ref)
        for (xa, ya, ia), (xb, yb, ib) in zip(got, ref):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and ia == ib, f"workers={workers}"
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    for (xa, ya, ia), (xb, yb, ib) in zip(ba.iterate(loader, epoch=1), ref):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ia == ib


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_images_device(batch):
    x, t = batch
    cpu = aug(mixup=0.2, cutmix=1.0)(x, t, epoch=0, step=1)
    dev = aug(mixup=0.2, cutmix=1.0)(x.cuda(), t.cuda(), epoch=0, step=1)
    assert dev[0].device.type == "cuda" and dev[2] == cpu[2]
    assert torch.allclose(dev[0].cpu(), cpu[0]) and torch.allclose(dev[1].cpu(), cpu[1])


# ====================================================================== the recipe section


def test_batch_section_resolves_and_changes_the_hash():
    plain = parse_recipe("train:\n  - flip: {}\n")
    r = parse_recipe("train:\n  - flip: {}\nbatch:\n  mixup: {}\n  cutmix: {alpha: 0.5}\n")
    assert r.batch == BatchSpec(0.2, 0.5, 1.0, 0.5)
    assert r.resolved()["batch"] == {"mixup": {"alpha": 0.2}, "cutmix": {"alpha": 0.5}, "p": 1.0, "switch_prob": 0.5}
    assert "batch" not in plain.resolved() and plain.hash != r.hash
    again = parse_recipe(r.resolved_yaml())
    assert again.batch == r.batch and again.hash == r.hash


@pytest.mark.parametrize(
    "body,line,match",
    [
        ("  mixup: {alpha: 0}\n", 4, r"batch.mixup: alpha: 0.0 must be greater than 0"),
        ("  mixup: {alpha: -1}\n", 4, r"alpha: -1 is out of range"),
        ("  mixup: {alpah: 1}\n", 4, r"unknown key 'alpah' in mixup; did you mean 'alpha'"),
        ("  mixup: {}\n  p: 1.5\n", 5, r"batch: p: 1.5 is out of range"),
        ("  mixup: {}\n  p: no\n", 5, r"batch: p: False is not a number"),
        ("  mixop: {}\n", 4, r"unknown key 'mixop' in batch; did you mean 'mixup'"),
        ("  cutmix: {}\n  switch_prob: 0.3\n", 5, r"switch_prob needs both mixup and cutmix"),
        ("  p: 0.5\n", 1, r"batch needs mixup, cutmix or both"),
    ],
)
def test_bad_batch_sections_name_line_and_key(body, line, match):
    with pytest.raises(RecipeError, match=match) as exc:
        parse_recipe("train:\n  - flip: {}\nbatch:\n" + body if line != 1 else "batch:\n" + body + "train: [flip]\n")
    assert exc.value.line == line


def test_recipes_check_exits_2_on_a_bad_batch_section(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  - flip: {}\nbatch:\n  cutmix: {alpha: 0}\n", encoding="utf-8")
    res = CliRunner().invoke(cli.app, ["recipes", "check", str(f)])
    assert res.exit_code == 2
    assert "bad.yaml:4: batch.cutmix: alpha: 0.0 must be greater than 0" in res.output.replace("\n", "")


# ---------------------------------------------------------------- against timm's Mixup


class _Centre:
    """Stands in for a generator: ``integers`` returns the given box centre (y, then x)."""

    def __init__(self, cy: int, cx: int):
        self._next = [cy, cx]

    def integers(self, lo, hi):
        return self._next.pop(0)


def test_cutmix_box_is_timms_for_odd_and_even_sides(monkeypatch):
    timm_mixup = pytest.importorskip("timm.data.mixup")
    from augkit.training.mixing import rand_bbox

    for h, w in ((32, 32), (31, 45), (17, 8)):
        for lam in (0.05, 0.3, 0.51, 0.77, 0.99):
            for cy, cx in ((0, 0), (h // 2, w // 3), (h - 1, w - 1)):
                seq = iter([cy, cx])
                monkeypatch.setattr(timm_mixup.np.random, "randint", lambda lo, hi, size=None: next(seq))
                ref = tuple(int(v) for v in timm_mixup.rand_bbox((3, h, w), lam))
                assert rand_bbox(h, w, lam, _Centre(cy, cx)) == ref, (h, w, lam, cy, cx)
    # an odd cut side keeps its length (the old box was 1 px short): 32 px, sqrt(1 - lam) = 23/32 -> 23 x 23
    y0, y1, x0, x1 = rand_bbox(32, 32, 1 - (23 / 32) ** 2, _Centre(16, 16))
    assert (y1 - y0, x1 - x0) == (23, 23)


@pytest.mark.parametrize("op", ["cutmix", "mixup"])
def test_a_batch_of_two_is_mixed_exactly_as_timm_does_it(batch, op, monkeypatch):
    """Same lambda and box centre: the same pixels and the same soft targets (for two images timm's
    flip(0) pairing and augkit's roll(1) are the same pairing)."""
    timm_mixup = pytest.importorskip("timm.data.mixup")
    x, t = batch[0][[0, 6]], batch[1][[0, 6]]
    lam, cy, cx = 0.63, 9, 20
    kw = {"cutmix": 1.0} if op == "cutmix" else {"mixup": 1.0}
    mine = aug(**kw, eps=0.1)
    monkeypatch.setattr(mine, "draw", lambda epoch, step: (op, lam, _Centre(cy, cx)))
    out, y, info = mine(x, t, epoch=0, step=0)
    ref = timm_mixup.Mixup(
        mixup_alpha=1.0 if op == "mixup" else 0.0,
        cutmix_alpha=1.0 if op == "cutmix" else 0.0,
        prob=1.0,
        mode="batch",
        label_smoothing=0.1,
        num_classes=K,
    )
    monkeypatch.setattr(timm_mixup.np.random, "rand", lambda *a: 0.0)  # always mix
    monkeypatch.setattr(timm_mixup.np.random, "beta", lambda a, b: lam)
    seq = iter([cy, cx])
    monkeypatch.setattr(timm_mixup.np.random, "randint", lambda lo, hi, size=None: next(seq))
    ref_x, ref_y = ref(x.float().clone(), t)
    assert torch.equal(out, ref_x) and torch.allclose(y, ref_y, atol=1e-7), info
    if op == "cutmix":
        assert info["lam"] != lam  # the corrected lambda, as timm's correct_lam


def test_odd_batches_pair_every_image_with_another_one(batch):
    """timm refuses odd batches (flip(0) would mix the middle image with itself); roll(1) needs no
    such rule: every image of a batch of 5 gets another image's pixels and label."""
    x, t = batch[0][:5], batch[1][:5]
    out, y, info = aug(mixup=1.0)(x, t, epoch=0, step=3)
    lam = info["lam"]
    assert 0 < lam < 1
    partner = torch.arange(5).roll(1)
    assert (partner != torch.arange(5)).all()
    assert torch.allclose(out, lam * x.float() + (1 - lam) * x[partner].float(), atol=1e-4)
    assert torch.allclose(y, lam * onehot(t) + (1 - lam) * onehot(t[partner]), atol=1e-6)
