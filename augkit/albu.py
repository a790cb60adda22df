"""The one door to albumentations: imported lazily and without dragging torch in.

``albumentations/__init__.py`` ends with ``with suppress(ImportError): from .pytorch import *``;
that line imports torch (~1.7 s) although augkit's recipes never use it. Recipes, previews
and the offline augment workers need only the numpy/OpenCV transforms, so
:func:`import_albumentations` hides ``albumentations.pytorch`` for the duration of the import
when torch is not loaded yet, then removes the block so a user's later
``from albumentations.pytorch import ToTensorV2`` still works.

In augkit's own processes (the ``augkit`` command and its workers: :mod:`augkit.process_setup`)
``huggingface_hub`` is hidden the same way: albumentations imports it (~0.1-0.2 s with httpx)
only for ``push_to_hub``/``from_pretrained``, which augkit never calls. A library user's process
keeps albumentations exactly as it is. (Checked for 2.0.8: no other
module of albumentations imports torch at import time; ``core.utils.get_image_shape`` imports it
only for non-numpy inputs, which augkit never passes.)
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

_PYTORCH = "albumentations.pytorch"
_HUB = "huggingface_hub"
_lock = threading.Lock()
_skip_hub = False


def skip_hub_imports() -> None:
    """In augkit's own processes (the CLI, a worker; :mod:`augkit.process_setup`): import
    albumentations without its Hugging Face Hub mixin's imports, which augkit never uses."""
    global _skip_hub
    _skip_hub = True


def import_albumentations() -> ModuleType:
    """Return the ``albumentations`` module, importing it without torch when torch is not loaded."""
    mod = sys.modules.get("albumentations")
    if mod is not None:
        return mod
    # albumentations contacts PyPI on import unless this is set first (augkit/__init__ sets it too).
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with _lock:
        hidden = [] if "torch" in sys.modules or _PYTORCH in sys.modules else [_PYTORCH]  # torch paid for: keep it
        if _skip_hub and _HUB not in sys.modules:
            hidden.append(_HUB)
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # makes `from .pytorch import *` an ImportError
        try:
            import albumentations  # deferred: the whole point of this module (imported without torch)
        finally:
            for name in hidden:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
            # The failed relative import may have left the attribute unset or bound to None.
            pkg = sys.modules.get("albumentations")
            if pkg is not None and getattr(pkg, "pytorch", 0) is None:
                delattr(pkg, "pytorch")
        return albumentations
