"""``--precision``: the number format training computes in, and the memory layout, chosen once per run.

The rule is :func:`precision_rule`, a pure function of the request, the device type, what the device
does natively (:class:`Capabilities`, probed by :func:`capabilities`), the kind of model
(:func:`model_kind`: a conv net or not) and the image size; ``tests/test_prefetch.py`` checks its table.

``auto`` on CPU trains with bfloat16 autocast and channels_last memory layout when the CPU has
native bfloat16 (AVX512-BF16 or AMX) *and* the image size is at least :data:`BF16_MIN_SIZE`;
otherwise float32. Measured on a 2-core Zen 4 (AVX512-BF16), ResNet-18 training steps: 1.9x
faster than float32 at 112 px, no gain at 32 px (small images are bound by per-layer overheads,
not arithmetic); the threshold lies between the two, on the side that keeps float32 when unsure.

``auto`` on CUDA: bfloat16 autocast where the GPU computes bfloat16 natively (compute capability 8.0
and up: Ampere, Hopper, ...; ``torch.cuda.is_bf16_supported(including_emulation=False)``), else
float32 (``--amp``: float16 autocast, as before). Conv nets train channels_last on CUDA whenever
autocast is on (bf16 or fp16, automatic or asked for): tensor-core convolutions run in NHWC, so
NCHW inputs cost a transpose per layer. This follows PyTorch's channels_last tutorial and timm's
``--amp``/``--channels-last`` guidance; it is **not measured in this repository** (no GPU was
available). bfloat16 has float32's range, so it needs no gradient scaler; the image size does not
enter the CUDA rule (the CPU's small-image finding is about CPU per-layer overheads).
Weights, optimizer state and checkpoints stay float32 in every mode (autocast only changes how
layers compute), so a checkpoint does not depend on the precision it was trained with.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from augkit.errors import UsageError

BF16_MIN_SIZE = 96  # px: auto uses bf16 on CPU from this image size up (gain measured at 112, none at 32)
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: what :func:`model_kind` returns: channels_last helps convolutions only
CONV, NOT_CONV = "conv", "not conv"


@dataclass(frozen=True)
class Capabilities:
    """What a device does with bfloat16: ``bf16`` usable at all (natively or emulated), ``native_bf16``
    computed natively (fast)."""

    bf16: bool
    native_bf16: bool


@dataclass(frozen=True)
class Precision:
    """A resolved ``--precision``: ``name`` is fp32, bf16 or fp16; ``reason`` says why."""

    name: str
    channels_last: bool
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self, device: torch.device):
        """The context a forward pass runs in (a no-op for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """A gradient scaler for float16 (whose small range underflows gradients); None otherwise."""
        if self.name != "fp16" or device.type not in ("cuda", "cpu"):
            return None
        return torch.amp.GradScaler(device.type)

    def to_dict(self) -> dict:
        return {"name": self.name, "channels_last": self.channels_last, "reason": self.reason}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), from /proc/cpuinfo
    (Linux); False where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes bfloat16 natively (compute capability >= 8.0; ROCm: always),
    not by emulation (which ``torch.cuda.is_bf16_supported()`` counts by default)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def capabilities(device: torch.device) -> Capabilities:
    """Probe ``device`` once: what :func:`precision_rule` needs to know about it."""
    if device.type == "cpu":
        return Capabilities(bf16=True, native_bf16=cpu_has_native_bf16())
    if device.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(device):
            usable = torch.cuda.is_bf16_supported()
        return Capabilities(bf16=usable, native_bf16=usable and cuda_has_native_bf16(device))
    return Capabilities(bf16=False, native_bf16=False)


def model_kind(model: nn.Module) -> str:
    """:data:`CONV` when ``model`` is a conv net (more than one ``Conv2d``: a vision transformer's patch
    embedding is a single convolution), else :data:`NOT_CONV`."""
    convs = 0
    for m in model.modules():
        convs += isinstance(m, nn.Conv2d)
        if convs > 1:
            return CONV
    return NOT_CONV


def choose_precision(
    requested: str, device: torch.device, image_size: int, *, amp: bool = False, kind: str = CONV
) -> Precision:
    """Resolve ``--precision`` (and the older ``--amp``) for this device, kind of model
    (:func:`model_kind`) and image size."""
    return precision_rule(requested, device.type, capabilities(device), kind, image_size, amp=amp)


def precision_rule(
    requested: str, device_type: str, caps: Capabilities, kind: str, image_size: int, *, amp: bool = False
) -> Precision:
    """The rule of the module docstring, as a pure function (``device_type``: cpu, cuda, mps, ...;
    ``kind``: :data:`CONV` or :data:`NOT_CONV`)."""
    if amp and requested not in ("auto", "fp16"):
        raise UsageError(f"--amp means float16 autocast: it cannot be combined with --precision {requested}")
    if requested == "auto":
        return _auto(device_type, caps, kind, image_size, amp)
    if requested == "bf16" and device_type == "cuda" and not caps.bf16:
        raise UsageError(f"--precision bf16: this {device_type} device does not support bfloat16")
    if requested != "fp32" and device_type == "mps":
        raise UsageError(f"--precision {requested}: mixed precision is supported on cpu and cuda, not mps")
    if device_type == "cuda":
        return _cuda(requested, kind, f"--precision {requested}")
    return Precision(requested, requested == "bf16" and device_type == "cpu", f"--precision {requested}")


def _cuda(name: str, kind: str, why: str) -> Precision:
    """On CUDA: conv nets go channels_last under autocast (tensor-core convolutions are NHWC)."""
    channels_last = name != "fp32" and kind == CONV
    layout = " + channels_last (conv net under autocast)" if channels_last else ""
    return Precision(name, channels_last, why + layout)


def _auto(device_type: str, caps: Capabilities, kind: str, image_size: int, amp: bool) -> Precision:
    if device_type == "cuda":
        if amp:
            return _cuda("fp16", kind, "auto on cuda with --amp: float16 autocast")
        if caps.native_bf16:
            return _cuda("bf16", kind, "auto on cuda: native bfloat16 (compute capability >= 8.0): bfloat16 autocast")
        return _cuda(
            "fp32", kind, "auto on cuda: no native bfloat16 (compute capability < 8.0): float32 (--amp for float16)"
        )
    if device_type != "cpu":
        return Precision("fp32", False, f"auto on {device_type}: float32")
    if not caps.native_bf16:
        return Precision("fp32", False, "auto: this CPU has no native bfloat16 (AVX512-BF16/AMX)")
    if image_size < BF16_MIN_SIZE:
        return Precision(
            "fp32", False, f"auto: image size {image_size} < {BF16_MIN_SIZE} px, where bfloat16 gains nothing"
        )
    return Precision("bf16", True, f"auto: native bfloat16 CPU and image size >= {BF16_MIN_SIZE} px")
