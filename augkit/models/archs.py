"""The architectures augkit trains: any torchvision classifier, and timm models (``timm/<name>``,
with the ``timm`` extra), each with a new classification head.

A *family* (ResNet, ConvNeXt, ViT, ...) is registered with the constructor arguments augkit always
passes (the same at training and prediction time, so a checkpoint rebuilds exactly) and the
ImageNet-weight keys of parts augkit builds without (Inception's auxiliary heads). The head itself
is found generically: the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``, SqueezeNet) under the first of
:data:`HEAD_ATTRS` the model has; timm models name theirs (``get_classifier``/``reset_classifier``).

Kept apart from :mod:`augkit.models.checkpoint` (which builds a saved model through this module) and
:mod:`augkit.models.weights` (the weights a model starts from, which reads checkpoints), so imports
point one way: models -> checkpoint -> archs. timm is imported only when a ``timm/`` name is used.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torchvision
from torch import nn

from augkit.errors import UsageError
from augkit.recipe.params import suggest

TIMM_PREFIX = "timm/"
TIMM_HINT = 'timm models need the timm extra: pip install "augkit[timm]"'
#: Where torchvision classifiers keep their classification layer, in the order they are tried.
HEAD_ATTRS = ("fc", "classifier", "heads", "head")
#: Input side used to find a model's head and probe a size on the meta device (no weights allocated).
_PROBE_BATCH = 2


@dataclass(frozen=True)
class Family:
    """How augkit builds one family of torchvision classifiers."""

    name: str
    pattern: str  # a regular expression matching the family's torchvision model names
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_keys: tuple[str, ...] = ()  # ImageNet-weight key prefixes of parts augkit builds without

    def matches(self, arch: str) -> bool:
        return re.fullmatch(self.pattern, arch) is not None


FAMILIES: dict[str, Family] = {}


def register_family(
    name: str, pattern: str, *, build_kwargs: dict[str, Any] | None = None, drop_keys: tuple[str, ...] = ()
) -> Family:
    """Add a family to :data:`FAMILIES` (a test checks every torchvision classifier has one)."""
    FAMILIES[name] = Family(name, pattern, dict(build_kwargs or {}), drop_keys)
    return FAMILIES[name]


register_family("ResNet", r"resnet\d+|resnext\w+|wide_resnet\w+")
register_family("ConvNeXt", r"convnext_\w+")
register_family("EfficientNet", r"efficientnet_\w+")
register_family("MobileNet", r"mobilenet_\w+")
register_family("MNASNet", r"mnasnet\w+")
register_family("RegNet", r"regnet_\w+")
register_family("ShuffleNet", r"shufflenet_\w+")
register_family("SqueezeNet", r"squeezenet\w+")
register_family("DenseNet", r"densenet\d+")
register_family("VGG", r"vgg\w+")
register_family("AlexNet", r"alexnet")
# Both normalise their input themselves when built with ImageNet weights (transform_input): always
# built so, and without the auxiliary heads (training them would need their losses).
register_family(
    "GoogLeNet",
    r"googlenet",
    drop_keys=("aux1.", "aux2."),
    build_kwargs={"aux_logits": False, "transform_input": True, "init_weights": True},
)
register_family(
    "Inception",
    r"inception_v3",
    drop_keys=("AuxLogits.",),
    build_kwargs={"aux_logits": False, "transform_input": True, "init_weights": True},
)
register_family("ViT", r"vit_\w+")
register_family("Swin", r"swin_\w+")
register_family("MaxViT", r"maxvit_\w+")


# ====================================================================== names


@functools.lru_cache(maxsize=1)
def torchvision_archs() -> tuple[str, ...]:
    """Every torchvision classification model name (not detection or segmentation ones)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def list_models(pattern: str | None = None, *, timm: bool = False) -> list[str]:
    """The names ``--arch`` takes: torchvision classifiers, or ``timm/<name>`` for timm's models.

    ``pattern`` is a shell-style wildcard (``resnet*``) or a plain substring; None lists all.
    """
    names = [TIMM_PREFIX + n for n in import_timm().list_models()] if timm else list(torchvision_archs())
    if not pattern:
        return names
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatch(n.removeprefix(TIMM_PREFIX), pattern)]
    return [n for n in names if pattern.lower() in n.lower()]


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def arch_source(arch: str) -> str:
    """``timm`` or ``torchvision``: the library that builds ``arch``."""
    return "timm" if is_timm(arch) else "torchvision"


def family_of(arch: str) -> str:
    """The family name shown by ``augkit models`` ("other" for a torchvision model no family names)."""
    if is_timm(arch):  # timm's module: resnet, vision_transformer, convnext, ...
        return timm_families().get(arch[len(TIMM_PREFIX) :], "timm")
    return next((f.name for f in FAMILIES.values() if f.matches(arch)), "other")


@functools.cache
def timm_families() -> dict[str, str]:
    """timm model name -> the timm module that defines it (its family), from timm's registry
    (no model is built)."""
    timm = import_timm()
    out: dict[str, str] = {}
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            out.setdefault(name, module)
    return out


def _family(arch: str) -> Family | None:
    return next((f for f in FAMILIES.values() if f.matches(arch)), None)


def import_timm() -> Any:
    """timm, or a :class:`UsageError` saying how to install it (it is an optional extra)."""
    try:
        import timm  # deferred: optional and heavy; `import augkit` never imports it
    except ImportError:
        raise UsageError(TIMM_HINT) from None
    return timm


def check_arch(arch: object, where: str = "", *, image_size: int | None = None) -> str:
    """``arch`` if augkit can build it (and take ``image_size`` px inputs, when given); else a
    :class:`UsageError` (exit 2) with "did you mean" and where to find the names."""
    if not isinstance(arch, str):
        raise UsageError(f"{where}unknown arch {arch!r} (a model name, e.g. resnet18; list: augkit models)")
    if is_timm(arch):
        name = arch[len(TIMM_PREFIX) :]
        timm = import_timm()
        if not timm.is_model(name):
            raise UsageError(
                f"{where}unknown arch {arch!r}: timm has no model {name!r}"
                f"{suggest(name, timm.list_models())} (list them: augkit models --timm PATTERN)"
            )
    elif arch not in torchvision_archs():
        raise UsageError(
            f"{where}unknown arch {arch!r}{suggest(arch, torchvision_archs())} (any torchvision "
            f"classifier, e.g. resnet18, convnext_tiny, efficientnet_b0, vit_b_16; list: augkit "
            f"models; or timm/<name> with the timm extra)"
        )
    if image_size is not None:
        check_image_size(arch, image_size, where)
    return arch


# ====================================================================== building


def _build(arch: str, num_classes: int) -> nn.Module:
    """The model as its library builds it, with a ``num_classes``-way head (weights random)."""
    if is_timm(arch):
        return import_timm().create_model(arch[len(TIMM_PREFIX) :], pretrained=False, num_classes=num_classes)
    family = _family(arch)
    kwargs = dict(family.build_kwargs) if family else {}
    if family is not None and family.name == "ViT":  # some ViT weights are for another size (vit_h_14: 518)
        kwargs["image_size"] = fixed_vit_size(arch)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    replace_head(model, num_classes)
    return model


def build_model(arch: str, num_classes: int) -> nn.Module:
    """An untrained ``arch`` whose classification head has ``num_classes`` outputs."""
    check_arch(arch)
    return _build(arch, num_classes)


def fixed_vit_size(arch: str) -> int:
    """The input side a torchvision ViT's default weights were trained at (its position embeddings)."""
    return int(torchvision.models.get_model_weights(arch).DEFAULT.meta["min_size"][0])


def head_name(model: nn.Module) -> str:
    """The dotted name of ``model``'s classification layer (``fc``, ``classifier.1``, ``heads.head``, ...)."""
    model = getattr(model, "module", model)  # DDP / DataParallel
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):  # timm
        head = cast(Any, model).get_classifier()
        found = next((name for name, m in model.named_modules() if m is head), None)
        if found:
            return found
    for attr in HEAD_ATTRS:
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            layers = [n for n, m in sub.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            if layers:
                return f"{attr}.{layers[-1]}" if layers[-1] else attr
    raise UsageError(
        f"cannot find the classification head of a {type(model).__name__} "
        f"(looked for a Linear layer under {', '.join(HEAD_ATTRS)})"
    )


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Put a new, randomly initialised ``num_classes``-way layer where the model's head was."""
    if hasattr(model, "reset_classifier"):  # timm
        cast(Any, model).reset_classifier(num_classes)
        return model
    name = head_name(model)
    old: Any = model.get_submodule(name)
    new = (
        nn.Linear(old.in_features, num_classes)
        if isinstance(old, nn.Linear)
        else nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    )  # SqueezeNet's head is a 1x1 conv
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def drop_keys(arch: str) -> tuple[str, ...]:
    """Prefixes of ImageNet-weight keys for parts augkit builds without (see :class:`Family`)."""
    family = None if is_timm(arch) else _family(arch)
    return family.drop_keys if family else ()


# ====================================================================== skeletons and sizes


@functools.lru_cache(maxsize=32)
def _skeleton(arch: str) -> nn.Module | None:
    """``arch`` built on the meta device (shapes only, no memory), or None where a constructor
    needs real numbers (RegNet computes widths from tensors)."""
    try:
        with torch.device("meta"):
            return _build(arch, 2).eval()
    except UsageError:
        raise
    except Exception:
        return None


@functools.lru_cache(maxsize=32)
def arch_head_name(arch: str) -> str:
    """:func:`head_name` of ``arch`` without allocating its weights (for checkpoint validation)."""
    model = _skeleton(arch)
    return head_name(model if model is not None else _build(arch, 2))


def check_image_size(arch: str, image_size: int, where: str = "") -> None:
    """A :class:`UsageError` when ``arch`` cannot take ``image_size`` px inputs (ViT needs its own
    size, MaxViT 224, Inception at least 75), found by running the model on the meta device."""
    model = _skeleton(arch)
    if model is None:
        return
    try:
        with torch.no_grad():
            model(torch.empty(_PROBE_BATCH, 3, image_size, image_size, device="meta"))
    except Exception as exc:
        fixed = getattr(model, "image_size", None)
        need = (
            f"it needs exactly {fixed} px"
            if isinstance(fixed, int) and not is_timm(arch)
            else f"its ImageNet size is {imagenet_size(arch)} px"
        )
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(
            f"{where}{arch} cannot take {image_size} px images ({first}): {need}; "
            f"use --image-size {fixed if isinstance(fixed, int) else imagenet_size(arch)}"
        ) from None


# ====================================================================== facts for `augkit models`


def imagenet_size(arch: str) -> int:
    """The side the default ImageNet weights were evaluated at (their centre crop)."""
    if is_timm(arch):
        cfg = import_timm().get_pretrained_cfg(arch[len(TIMM_PREFIX) :])
        return int(cfg.input_size[-1]) if cfg is not None else 224
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    crop = getattr(weights.transforms, "keywords", {}).get("crop_size")
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop) if crop else int(weights.meta["min_size"][0])


def num_params(arch: str) -> int:
    """Parameters of the ImageNet model (from the weights' metadata: nothing is downloaded)."""
    if is_timm(arch):
        with torch.device("meta"):
            model = _build(arch, 1000)
        return sum(p.numel() for p in model.parameters())
    return int(torchvision.models.get_model_weights(arch).DEFAULT.meta["num_params"])


def describe(arch: str, *, params: bool = True) -> dict[str, Any]:
    """One row of ``augkit models``: name, family, ImageNet size, parameters (None when not
    asked: a timm model's count needs the model built, ~0.3 s each), source."""
    return {
        "name": arch,
        "family": family_of(arch),
        "imagenet_size": imagenet_size(arch),
        "params": num_params(arch) if params else None,
        "source": arch_source(arch),
    }
