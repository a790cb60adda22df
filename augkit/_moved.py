"""Old import paths: augkit's modules lived in one flat folder until they moved into rooms
(sub-packages). ``import augkit.policy_transform`` (which exported albumentations files name) and
``from augkit.augment import augment`` keep working: the old name is an alias of the module's new
home, with a DeprecationWarning that says where it moved.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module (under augkit.) -> its new home
MOVED = {
    "archs": "augkit.models.archs",
    "augment": "augkit.offline.run",
    "augment_task": "augkit.offline.task",
    "batchaug": "augkit.training.mixing",
    "batchspec": "augkit.recipe.batchspec",
    "cache": "augkit.training.cache",
    "checkpoint": "augkit.models.checkpoint",
    "dataset": "augkit.training.dataset",
    "distributed": "augkit.training.distributed",
    "evaluate": "augkit.infer.evaluate",
    "executors": "augkit.offline.executors.local",
    "executors_ray": "augkit.offline.executors.ray",
    "export": "augkit.infer.export",
    "fileio": "augkit.io.fileio",
    "freeze": "augkit.training.freeze",
    "gallery": "augkit.infer.gallery",
    "images": "augkit.io.images",
    "inference": "augkit.infer.engine",
    "item_result": "augkit.offline.executors.result",
    "jpeg": "augkit.io.jpeg",
    "local_pool": "augkit.offline.executors.pool",
    "models": "augkit.models.weights",
    "onnx_backend": "augkit.infer.onnx_backend",
    "ops": "augkit.recipe.ops",
    "outdir": "augkit.offline.dst",
    "outfiles": "augkit.infer.files",
    "own_process": "augkit.process_setup",
    "params": "augkit.recipe.params",
    "passthrough": "augkit.recipe.passthrough",
    "plot": "augkit.training.plot",
    "policies": "augkit.recipe.policies.register",
    "policy_ops": "augkit.recipe.policies.functional",
    "policy_transform": "augkit.recipe.policies.transform",
    "precision": "augkit.training.precision",
    "predict": "augkit.infer.predict",
    "predict_ray": "augkit.infer.predict_ray",
    "preprocess": "augkit.io.preprocess",
    "preview": "augkit.offline.preview",
    "recipe": "augkit.recipe.api",
    "run_files": "augkit.training.run_files",
    "scan": "augkit.io.scan",
    "train": "augkit.training.loop",
    "train_config": "augkit.training.config",
    "tta": "augkit.infer.tta",
    "views": "augkit.recipe.views",
    "worker_preload": "augkit.offline.executors.preload",
    "yamlio": "augkit.recipe.yamlio",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("augkit.")
        if fullname.startswith("augkit.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name.removeprefix("augkit.")]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module is already executed


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
