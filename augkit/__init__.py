"""augkit: image data augmentation and test-time augmentation.

The public API, imported lazily (``import augkit`` loads neither torch nor OpenCV)::

    import augkit
    recipe = augkit.load_recipe("digits")
    augkit.offline.run("data", "data-aug", recipe, copies=2)
    result = augkit.training.loop(augkit.TrainConfig(data="data", run_dir="runs/r1", recipe="digits"))

The rooms (sub-packages), lowest layer first: top-level modules are the shared basics (errors,
seeding, limits, devices, the albumentations door); :mod:`augkit.io` reads images;
:mod:`augkit.recipe.api` parses and builds recipes; :mod:`augkit.models.weights` and :mod:`augkit.offline`
(``augkit augment``, ``augkit preview``) build on those; :mod:`augkit.training` and
:mod:`augkit.infer` (predict, evaluate, export) on top; :mod:`augkit.commands` is the command line.
``docs/architecture.md`` has the map.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "load_recipe": "augkit.recipe.api",
    "augment": "augkit.offline.run",
    "preview": "augkit.offline.preview",
    "AugmentedImageFolder": "augkit.training.dataset",
    "train": "augkit.training.loop",
    "TrainConfig": "augkit.training.config",
    "predict": "augkit.infer.predict",
    "evaluate": "augkit.infer.evaluate",
    "export_onnx": "augkit.infer.export",
    "TTAWrapper": "augkit.infer.tta",
    "list_ops": "augkit.recipe.ops",
    "list_models": "augkit.models.archs",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'augkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """Keeps a public function (``augkit.offline.run``) from being replaced by the old module of the same
    name when old code imports ``augkit.offline.run`` (Python sets the parent's attribute on import)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from augkit import _moved  # noqa: E402  (old flat module paths, e.g. augkit.policy_transform, still import)

_moved.install()
