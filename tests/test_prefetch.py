"""Batches reach the device ahead of their step (augkit.training.prefetch), mixup/cutmix run there with the
same seeded draws, and --precision auto picks bf16/channels_last by a pure rule (augkit.training.precision).

No GPU here: the CUDA stream logic runs against a small fake of the four torch.cuda calls it makes
(current_stream, Stream, stream, Tensor.record_stream), on CPU tensors, and is checked for its order:
the side stream prepares batch k+1 before batch k is used, the training stream waits for the side
stream before it uses a batch, and every tensor it is handed is recorded as used by it."""

from __future__ import annotations

import contextlib
import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _digits import digit_images, digits_folder

import augkit.training.feed as feed_module
from augkit.errors import UsageError
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD
from augkit.models.archs import build_model
from augkit.recipe.batchspec import BatchSpec
from augkit.training.config import TrainConfig
from augkit.training.feed import FeedMeter
from augkit.training.loop import train, train_one_epoch
from augkit.training.mixing import BatchAugment
from augkit.training.precision import CONV, NOT_CONV, Capabilities, model_kind, precision_rule
from augkit.training.prefetch import CudaStreams, Prefetcher

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loader() -> torch.utils.data.DataLoader:
    """20 real digits (0-4, four each), uint8 (3, 24, 24), in batches of 6 (the last one 2)."""
    imgs, labels = [], []
    for d in range(5):
        imgs += digit_images(d, 4, size=24)
        labels += [d] * 4
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    ds = torch.utils.data.TensorDataset(x, torch.tensor(labels))
    return torch.utils.data.DataLoader(ds, batch_size=6, shuffle=False)


def old_model_input(x: torch.Tensor) -> torch.Tensor:
    """augkit's training step before the prefetcher (loop.model_input), verbatim."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean) / std


def mixer(seed: int, mixup=0.4, cutmix=1.0) -> BatchAugment:
    return BatchAugment(BatchSpec(mixup, cutmix, 1.0, 0.5), 5, seed, label_smoothing=0.1)


# ====================================================================== CPU: a pass-through


def test_on_cpu_batches_are_the_old_steps_batches_in_order(loader, monkeypatch):
    def no_cuda(*a, **k):
        raise AssertionError("a CPU prefetch must not touch torch.cuda")

    monkeypatch.setattr(torch.cuda, "Stream", no_cuda)
    monkeypatch.setattr(torch.cuda, "current_stream", no_cuda)
    pre = Prefetcher(CPU)
    got = list(pre(loader))
    assert not pre.overlapped and len(got) == len(loader) == 4
    for b, (x, y) in zip(got, loader):
        assert torch.equal(b.images, old_model_input(x)) and b.images.dtype == torch.float32
        assert torch.equal(b.targets, y) and torch.equal(b.labels, y)
    last = list(Prefetcher(CPU, channels_last=True)(loader))[-1]
    assert last.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(last.images, got[-1].images)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("kinds", [(0.4, None), (None, 1.0), (0.4, 1.0)], ids=["mixup", "cutmix", "both"])
def test_mixing_in_the_prefetcher_is_the_old_steps_mixing(loader, seed, kinds):
    """For a seed, the mixed batches (pixels, soft targets, dominant labels) are exactly what the training
    step computed before: normalize, then mix as step k of the epoch."""
    mix = mixer(seed, *kinds)
    got = list(Prefetcher(CPU, mix=mix, epoch=3)(loader))
    ops = set()
    for step, (b, (x, y)) in enumerate(zip(got, loader)):
        xo, to, info = mix(old_model_input(x), y, epoch=3, step=step)
        ops.add(info["op"])
        assert torch.equal(b.images, xo) and torch.equal(b.targets, to)
        assert torch.equal(b.labels, to.argmax(1))
    assert ops <= {"mixup", "cutmix"} and ops  # every batch was mixed (p = 1)
    assert not torch.equal(got[0].images, old_model_input(next(iter(loader))[0]))


def test_mixing_does_not_depend_on_where_it_runs_but_for_rounding(loader):
    """Mixing uint8 pixels on the host, then normalizing, gives the device-side result (normalized, then
    mixed) to float rounding: the draws are the same, the arithmetic commutes."""
    mix = mixer(5)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for step, (b, (x, y)) in enumerate(zip(Prefetcher(CPU, mix=mix)(loader), loader)):
        host, target, _ = mix(x, y, epoch=0, step=step)  # float32 on the 0-255 scale
        assert torch.allclose(b.images, (host / 255.0 - mean) / std, atol=1e-5)
        assert torch.equal(b.targets, target)


# ====================================================================== CUDA: the stream logic, faked


class FakeStream:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("wait", self.name, other.name))


@pytest.fixture
def fake_cuda(monkeypatch) -> list:
    """torch.cuda's stream calls replaced by a log of (event, ...) tuples; returns the log."""
    log: list = []
    main = FakeStream("main", log)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream("side", log))

    @contextlib.contextmanager
    def stream(s):
        log.append(("enter", s.name))
        yield
        log.append(("exit", s.name))

    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: log.append(("record", id(t), s.name)))
    return log


def test_cuda_prepares_the_next_batch_on_a_side_stream_and_hands_it_over_safely(loader, fake_cuda):
    log = fake_cuda
    pre = Prefetcher(CPU, mix=mixer(2), streams=CudaStreams(torch.device("cuda")))
    got = []
    for b in pre(loader):
        log.append(("use", len(got)))
        got.append(b)
    assert pre.overlapped
    assert log[0] == ("wait", "side", "main")  # the side stream starts after the training stream's queued work
    prepared = [i for i, e in enumerate(log) if e == ("exit", "side")]
    used = [log.index(("use", k)) for k in range(len(got))]
    assert len(prepared) == len(got) == 4
    for k, b in enumerate(got):
        if k + 1 < len(got):  # batch k+1 is queued on the side stream before batch k is used: they overlap
            assert prepared[k + 1] < used[k]
        window = log[prepared[k] : used[k]]  # between batch k's preparation and its use
        wait = window.index(("wait", "main", "side"))  # the training stream waits for the side stream ...
        recorded = {e[1] for e in window[wait:] if e[0] == "record" and e[2] == "main"}  # ... and owns its tensors
        assert {id(b.images), id(b.targets), id(b.labels)} <= recorded
    reference = list(Prefetcher(CPU, mix=mixer(2))(loader))  # the same batches as without streams
    assert all(torch.equal(a.images, r.images) and torch.equal(a.targets, r.targets) for a, r in zip(got, reference))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the fakes above run everywhere)")
def test_on_a_real_gpu_the_prefetched_batches_are_the_cpu_ones_to_rounding(loader):
    pinned = torch.utils.data.DataLoader(loader.dataset, batch_size=6, pin_memory=True)
    cuda = torch.device("cuda")
    pre = Prefetcher(cuda, channels_last=True, mix=mixer(4), epoch=1)
    got = [(b.images.cpu(), b.targets.cpu(), b.labels.cpu()) for b in pre(pinned)]
    ref = list(Prefetcher(CPU, channels_last=True, mix=mixer(4), epoch=1)(loader))
    assert pre.overlapped and len(got) == len(ref) == 4
    for (x, t, y), r in zip(got, ref):
        assert torch.allclose(x, r.images, atol=1e-5) and torch.allclose(t, r.targets) and torch.equal(y, r.labels)


def test_a_cuda_device_gets_streams_and_a_cpu_one_none(fake_cuda):
    assert Prefetcher(torch.device("cuda")).overlapped and not Prefetcher(CPU).overlapped


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize("streams", [False, True], ids=["cpu", "cuda-streams"])
def test_data_wait_counts_the_loader_alone_not_the_copy(loader, monkeypatch, fake_cuda, streams):
    """The FeedMeter inside the prefetcher times the loader's next() only: a loader that takes 1 s a batch
    and a copy/normalize/mix that takes 10 s a batch give 1 s of waiting per batch, in either mode."""
    clock = FakeClock()
    monkeypatch.setattr(feed_module, "time", clock)

    def slow_loader():
        for batch in loader:
            clock.now += 1.0
            yield batch

    pre = Prefetcher(CPU, streams=CudaStreams(torch.device("cuda")) if streams else None)
    prepare = pre.prepare

    def slow_prepare(batch, step):
        clock.now += 10.0
        return prepare(batch, step)

    monkeypatch.setattr(pre, "prepare", slow_prepare)
    meter = FeedMeter()
    n = sum(1 for _ in pre(meter.iterate(slow_loader())))
    assert n == 4 and meter.wait_seconds == 4.0 and meter.stats().seconds == 44.0


def test_train_one_epoch_reports_the_loaders_wait_not_the_device_work(loader, monkeypatch):
    """In the training step as wired (train_one_epoch): 1 s of loading and 10 s of preparing a batch
    give wait_seconds = 1 s per batch; the preparing is the step's."""
    clock = FakeClock()
    monkeypatch.setattr(feed_module, "time", clock)
    prepare = Prefetcher.prepare

    def slow_prepare(self, batch, step):
        clock.now += 10.0
        return prepare(self, batch, step)

    def slow_loader():
        for batch in loader:
            clock.now += 1.0
            yield batch

    monkeypatch.setattr(Prefetcher, "prepare", slow_prepare)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = train_one_epoch(model, slow_loader(), opt, CPU)
    assert out["images"] == 20 and out["wait_seconds"] == 4.0


# ====================================================================== --precision auto


NATIVE, EMULATED, NONE = Capabilities(True, True), Capabilities(True, False), Capabilities(False, False)

RULE = [
    # requested, device, capabilities, model kind, size, amp -> name, channels_last
    ("auto", "cpu", NATIVE, CONV, 112, False, "bf16", True),  # the CPU rule as before (measured)
    ("auto", "cpu", NATIVE, NOT_CONV, 112, False, "bf16", True),
    ("auto", "cpu", NATIVE, CONV, 32, False, "fp32", False),
    ("auto", "cpu", EMULATED, CONV, 224, False, "fp32", False),
    ("bf16", "cpu", EMULATED, CONV, 32, False, "bf16", True),
    ("fp16", "cpu", NATIVE, CONV, 224, False, "fp16", False),
    ("auto", "cuda", NATIVE, CONV, 224, False, "bf16", True),  # Ampere and up: bf16 + channels_last
    ("auto", "cuda", NATIVE, CONV, 32, False, "bf16", True),  # the size does not enter the CUDA rule
    ("auto", "cuda", NATIVE, NOT_CONV, 224, False, "bf16", False),  # a transformer keeps its layout
    ("auto", "cuda", EMULATED, CONV, 224, False, "fp32", False),  # emulated bf16 is slow: fp32
    ("auto", "cuda", EMULATED, CONV, 224, True, "fp16", True),  # --amp
    ("auto", "cuda", NATIVE, NOT_CONV, 224, True, "fp16", False),
    ("fp16", "cuda", NATIVE, CONV, 224, False, "fp16", True),
    ("bf16", "cuda", EMULATED, CONV, 224, False, "bf16", True),
    ("fp32", "cuda", NATIVE, CONV, 224, False, "fp32", False),
    ("auto", "mps", NONE, CONV, 224, False, "fp32", False),
]


@pytest.mark.parametrize("requested,device,caps,kind,size,amp,name,channels_last", RULE)
def test_precision_rule_table(requested, device, caps, kind, size, amp, name, channels_last):
    p = precision_rule(requested, device, caps, kind, size, amp=amp)
    assert (p.name, p.channels_last) == (name, channels_last), p.reason
    assert p.reason and ("channels_last" in p.reason) == (channels_last and device == "cuda")


@pytest.mark.parametrize(
    "requested,device,caps,amp,match",
    [
        ("bf16", "cuda", NONE, False, "does not support bfloat16"),
        ("bf16", "cuda", NATIVE, True, "--amp"),
        ("fp16", "mps", NONE, False, "not mps"),
    ],
)
def test_precision_rule_refusals(requested, device, caps, amp, match):
    with pytest.raises(UsageError, match=match):
        precision_rule(requested, device, caps, CONV, 224, amp=amp)


@pytest.mark.parametrize(
    "arch,kind",
    [
        ("resnet18", CONV),
        ("convnext_tiny", CONV),
        ("mobilenet_v3_small", CONV),
        ("vit_b_16", NOT_CONV),
        ("swin_t", NOT_CONV),
    ],
)
def test_model_kind(arch, kind):
    with torch.device("meta"):  # shapes only: nothing allocated
        model = build_model(arch, 3)
    assert model_kind(model) == kind


# ====================================================================== the run


def test_train_on_cpu_writes_the_same_metrics_columns_and_says_how_batches_reach_the_device(tmp_path: Path):
    data = digits_folder(tmp_path / "data", digits=(0, 1), per_class=6, size=16)
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("name: mix\ntrain:\n  - flip: {}\nbatch:\n  mixup: {alpha: 0.4}\n  cutmix: {alpha: 1.0}\n")
    cfg = TrainConfig(
        data=data, out=tmp_path / "run", weights="none", epochs=1, batch_size=4, image_size=16,
        recipe=str(recipe), workers=0, threads=1, seed=3, device="cpu", val_split=0.25, progress=False,
    )  # fmt: skip
    result = train(cfg)
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr_backbone", "lr_head", "seconds",
        "images_per_s", "lr_first", "lr_last", "ema_val_loss", "ema_val_acc", "weights", "data_wait",
        "loader_img_s", "model_img_s",
    ]  # fmt: skip
    assert len(rows) == 1 and result.mixed and 0 <= float(rows[0]["val_acc"]) <= 1
    resolved = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())["resolved"]
    assert resolved["feed"].startswith("on cpu") and "mixed" in resolved["feed"]
    assert resolved["precision"]["name"] == result.precision and set(resolved["precision"]) == {
        "name",
        "channels_last",
        "reason",
    }


def test_prefetch_stops_cleanly_when_the_step_stops_early(loader, fake_cuda):
    """A step that raises (a non-finite loss) leaves the generator mid-way: closing it is clean."""
    gen = Prefetcher(CPU, streams=CudaStreams(torch.device("cuda")))(loader)
    first = list(itertools.islice(gen, 2))
    gen.close()
    assert len(first) == 2 and torch.equal(first[1].labels, next(itertools.islice(loader, 1, None))[1])
