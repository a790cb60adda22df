"""The weights a model starts from: ImageNet through torchvision (or timm), or a file (an earlier
augkit run, or a plain state dict). The architectures themselves live in :mod:`augkit.models.archs`."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from augkit.errors import UsageError
from augkit.models.archs import (
    TIMM_PREFIX,
    build_model,
    drop_keys,
    head_name,
    import_timm,
    is_timm,
    torchvision_archs,
)
from augkit.models.checkpoint import FORMAT, check_state_dict, find_checkpoint, load_checkpoint

__all__ = [
    "ARCHS",
    "build_model",
    "check_imagenet_reachable",
    "imagenet_state_dict",
    "load_backbone_weights",
    "weights_file_state_dict",
]
#: Every torchvision classifier (``timm/<name>`` is accepted too; see :func:`augkit.models.archs.check_arch`).
ARCHS = torchvision_archs()


def imagenet_state_dict(arch: str) -> dict:
    """ImageNet weights: torchvision's default weights for ``arch`` (downloaded on first use and
    cached), or timm's pretrained weights (from the Hugging Face hub) for ``timm/<name>``."""
    try:
        if is_timm(arch):
            timm = import_timm()
            return timm.create_model(arch[len(TIMM_PREFIX) :], pretrained=True).state_dict()
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        state = enum.get_state_dict(progress=True, check_hash=True)
    except UsageError:
        raise
    except Exception as exc:  # URLError, socket, SSL, hub errors ...
        cache = "the Hugging Face cache" if is_timm(arch) else torch.hub.get_dir()
        raise UsageError(
            f"could not download ImageNet weights for {arch} ({type(exc).__name__}: "
            f"{str(exc)[:300]}). Without internet, use --weights none or --weights PATH (a state "
            f"dict file, or an earlier augkit run); downloads are cached in {cache}"
        ) from None
    dropped = drop_keys(arch)
    return {k: v for k, v in state.items() if not k.startswith(dropped)} if dropped else state


#: Seconds to wait for the weights' host before saying it is unreachable (a first run offline
#: must not hang for the system's TCP timeout, minutes, before the message).
CONNECT_TIMEOUT_S = 5.0
HF_HOST = "huggingface.co"


def imagenet_source(arch: str) -> tuple[str, Path | None, str]:
    """Where ``arch``'s ImageNet weights come from: (URL or hub id, the cached file when it is
    there, the cache folder), read from torchvision's or timm's metadata; nothing is downloaded."""
    if is_timm(arch):
        cfg = import_timm().get_pretrained_cfg(arch[len(TIMM_PREFIX) :])
        hub_id = getattr(cfg, "hf_hub_id", None) or ""
        cached = _hf_cached(hub_id)
        return f"https://{HF_HOST}/{hub_id}", cached, _hf_cache_dir()
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(url).path)
    return url, path if path.is_file() else None, str(folder)


def _hf_cached(hub_id: str) -> Path | None:
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred: comes with the timm extra
    except ImportError:
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE  # deferred: comes with the timm extra
    except ImportError:
        return "the Hugging Face cache"
    return str(HF_HUB_CACHE)


def check_imagenet_reachable(arch: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Before any work: ``arch``'s ImageNet weights are cached, or their host answers; else a
    :class:`UsageError` that says so and offers ``--weights none`` (a first run offline). Returns
    "cached" or "downloadable". A host that answers may still fail later (then
    :func:`imagenet_state_dict` says why)."""
    url, cached, folder = imagenet_source(arch)
    if cached is not None:
        return "cached"
    host = urlparse(url).hostname or url
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(
            f"--weights imagenet: could not download ImageNet weights for {arch}: none are cached ({folder}) and "
            f"{host} cannot be reached ({reason}). Train without them with --weights none (from random weights: expect more "
            f"epochs and lower accuracy), or --weights PATH (a state dict or an earlier augkit run); or "
            f"download {url} on a machine with internet into {folder}"
        ) from None
    return "downloadable"


def load_backbone_weights(model: nn.Module, state: dict, source: str) -> list[str]:
    """Load every weight except the classification head; returns the keys that were loaded.

    Shapes must match; a different architecture is an error, not a silent partial load.
    """
    own = model.state_dict()
    head = head_name(model) + "."
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in own if not k.startswith(head) and k not in body]
    wrong = [k for k, v in body.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in body if k not in own]
    if missing or wrong or unknown:
        detail = "; ".join(
            x
            for x in (
                f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                f"{len(wrong)} with other shapes (e.g. {wrong[0]})" if wrong else "",
                f"{len(unknown)} unexpected (e.g. {unknown[0]})" if unknown else "",
            )
            if x
        )
        raise UsageError(f"{source}: weights do not fit this architecture: {detail}")
    model.load_state_dict({**own, **body})
    return list(body)


def weights_file_state_dict(path: str | Path) -> dict:
    """A state dict from a file: an augkit checkpoint/run folder (validated in full, as predict
    does) or a plain torchvision state dict (optionally under a ``state_dict`` key)."""
    path = Path(path)
    source = find_checkpoint(path) if path.is_dir() else path
    ckpt = load_checkpoint(source, allow_plain=not path.is_dir())
    if ckpt.get("format") == FORMAT:
        return ckpt["state_dict"]  # validated by load_checkpoint
    return check_state_dict(ckpt["state_dict"] if "state_dict" in ckpt else ckpt, source)
