"""TTA on tensors: every view kind, inverses, merges and the wrapper."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest
import torch
from torch import nn

from augkit.infer import tta
from augkit.infer.evaluate import mcnemar_exact, select_views
from augkit.recipe.views import MERGE_MODES, PRESETS, VIEW_KINDS, make_view, preset_views, prim

ALL_PRESET_VIEWS = {v.name: v for p in PRESETS for v in preset_views(p)}
KIND_EXAMPLES = {  # one view of every kind, non-default parameters where there are any
    "identity": make_view(prim("identity")),
    "hflip": make_view(prim("hflip")),
    "vflip": make_view(prim("vflip")),
    "rot90": make_view(prim("rot90", k=3)),
    "shift": make_view(prim("shift", x=0.25, y=-0.125)),
    "crop": make_view(prim("crop", position="br", size=0.5)),
    "scale": make_view(prim("scale", factor=1.5)),
}


class TinyNet(nn.Module):
    """A small deterministic classifier (any input size) whose output depends on orientation."""

    def __init__(self, k: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, k)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def net():
    return TinyNet().eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g)


def test_every_kind_has_a_kernel_and_an_example():
    assert set(tta.KERNELS) == set(VIEW_KINDS)
    assert set(KIND_EXAMPLES) == set(VIEW_KINDS)
    assert set(tta.MERGES) == set(MERGE_MODES)


@pytest.mark.parametrize("name", sorted({**ALL_PRESET_VIEWS, **{v.name: v for v in KIND_EXAMPLES.values()}}))
def test_view_is_deterministic_and_inverts_where_it_can(name, batch):
    view = {**ALL_PRESET_VIEWS, **{v.name: v for v in KIND_EXAMPLES.values()}}[name]
    a, b = tta.apply_view(batch, view), tta.apply_view(batch.clone(), view)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    if tta.is_invertible(view):
        assert torch.equal(tta.deaug(a, view), batch)
    else:
        with pytest.raises(ValueError, match="not invertible"):
            tta.deaug(a, view)


def test_view_semantics_match_numpy():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    n = x.numpy()
    ap = lambda kind, **kw: tta.apply_view(x, make_view(prim(kind, **kw))).numpy()  # noqa: E731
    assert np.array_equal(ap("hflip"), n[..., ::-1])
    assert np.array_equal(ap("vflip"), n[..., ::-1, :])
    for k in (1, 2, 3):  # counter-clockwise, as numpy.rot90 on an H x W picture
        assert np.array_equal(ap("rot90", k=k), np.rot90(n, k, axes=(2, 3)))
    assert np.array_equal(ap("crop", position="center", size=1.0), n)
    assert ap("scale", factor=0.5).shape == (2, 3, 2, 3)  # round(2.5) = 2 (half to even)
    assert ap("scale", factor=2.0).shape == (2, 3, 10, 12)
    assert ap("crop", position="tl", size=0.5).shape == n.shape  # resized back


def test_shift_moves_content_and_reflects_the_border():
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    right = tta.apply_view(x, make_view(prim("shift", x=2 / 6, y=0.0)))
    assert torch.equal(right[..., 2:], x[..., :4])  # content moved 2 px right
    assert torch.equal(right[..., :2], x[..., [2, 1]])  # reflected (edge pixel not repeated)
    down = tta.apply_view(x, make_view(prim("shift", x=0.0, y=-1 / 6)))
    assert torch.equal(down[..., :5, :], x[..., 1:, :])  # -y moves content up
    # a shift and its opposite give back the image except the reflected band
    back = tta.apply_view(right, make_view(prim("shift", x=-2 / 6, y=0.0)))
    assert torch.equal(back[..., :4], x[..., :4])


def test_crop_takes_the_named_corner():
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, 4:] = 1.0  # top-right quarter
    tr = tta.apply_view(x, make_view(prim("crop", position="tr", size=0.5)))
    bl = tta.apply_view(x, make_view(prim("crop", position="bl", size=0.5)))
    assert torch.allclose(tr, torch.ones_like(tr)) and torch.allclose(bl, torch.zeros_like(bl))


def test_identity_only_equals_plain_prediction_exactly(net, batch):
    wrapper = tta.TTAWrapper(net, "identity")
    with torch.no_grad():
        assert torch.equal(wrapper(batch), torch.softmax(net(batch), dim=-1))


def test_mean_equals_hand_computed_average(net, batch):
    views = preset_views("flip+shift")
    wrapper = tta.TTAWrapper(net, views, "mean")
    with torch.no_grad():
        merged = wrapper(batch)
        per_view = [torch.softmax(net(tta.apply_view(batch, v)), -1) for v in views]
    hand = sum(per_view) / len(views)
    assert torch.allclose(merged, hand, atol=1e-6)
    assert torch.allclose(merged.sum(-1), torch.ones(len(batch)), atol=1e-6)


@pytest.mark.parametrize("preset", ["flip+shift", "ten-crop", "d4", "scales+flip"])
def test_batched_views_equal_a_per_view_loop(net, batch, preset):
    views = preset_views(preset)
    with torch.no_grad():
        batched = tta.TTAWrapper(net, views).view_probs(batch)
        chunked = tta.TTAWrapper(net, views, max_batch=3).view_probs(batch)
        loop = torch.stack([torch.softmax(net(tta.apply_view(batch, v)), -1) for v in views])
    assert batched.shape == (len(views), len(batch), 5)
    assert torch.allclose(batched, loop, atol=1e-6)
    assert torch.allclose(chunked, loop, atol=1e-6)


def test_all_views_of_a_batch_go_through_the_model_together(batch):
    calls = []

    class Spy(TinyNet):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    with torch.no_grad():
        tta.TTAWrapper(Spy().eval(), "flip+shift")(batch)
        assert calls == [10 * len(batch)]
        calls.clear()
        tta.TTAWrapper(Spy().eval(), "scales")(batch)  # three input sizes: three forwards
        assert sorted(calls) == [len(batch)] * 3


@pytest.mark.parametrize("merge", MERGE_MODES)
def test_merges_give_probabilities_without_nan_even_for_huge_logits(merge):
    class Huge(nn.Module):
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)) * 1e6, -x.mean((1, 2, 3)) * 1e6, torch.zeros(len(x))], 1)

    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = tta.TTAWrapper(Huge(), "flip+shift", merge, beta=0.3)(x)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.allclose(p.sum(-1), torch.ones(len(x)), atol=1e-6)


def test_merge_formulas():
    p = torch.tensor([[[0.6, 0.4]], [[0.2, 0.8]]])  # (V=2, N=1, K=2)
    assert torch.allclose(tta.merge_probs(p, "mean"), torch.tensor([[0.4, 0.6]]))
    g = torch.tensor([(0.6 * 0.2) ** 0.5, (0.4 * 0.8) ** 0.5])
    assert torch.allclose(tta.merge_probs(p, "gmean"), (g / g.sum())[None])
    assert torch.allclose(tta.merge_probs(p, "max"), torch.tensor([[0.6, 0.8]]) / 1.4)
    s = torch.tensor([0.6**0.5 + 0.2**0.5, 0.4**0.5 + 0.8**0.5])
    assert torch.allclose(tta.merge_probs(p, "tsharpen"), (s / s.sum())[None])
    plain = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(tta.merge_probs(p, "mean", 0.25, plain), torch.tensor([[0.55, 0.45]]))


def test_beta_adds_the_plain_view_when_missing(net, batch):
    five = preset_views("five-crop")  # no identity view
    w = tta.TTAWrapper(net, five, beta=1.0)
    assert len(w.all_views) == 6 and w.all_views[-1].is_identity and w.plain_index == 5
    with torch.no_grad():
        assert torch.allclose(w(batch), torch.softmax(net(batch), -1), atol=1e-6)
    assert tta.TTAWrapper(net, five).plain_index is None


def test_wrapper_rejects_bad_settings(net):
    with pytest.raises(ValueError, match="merge"):
        tta.TTAWrapper(net, "flip", merge="median")
    with pytest.raises(ValueError, match="beta"):
        tta.TTAWrapper(net, "flip", beta=1.5)
    with pytest.raises(ValueError, match="at least one view"):
        tta.TTAWrapper(net, [])


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert 0 < mcnemar_exact(4000, 4500) < 1e-6  # big n stays exact, no overflow


def test_greedy_selection_finds_the_helpful_views():
    y = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.45, 0.55]])
    bad = 1 - good
    half = np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    probs = np.stack([half, bad, good]).astype(np.float32)
    assert select_views(probs, y) == [2]
