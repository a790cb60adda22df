"""The one door to albumentations: imported lazily and without dragging torch in.

``albumentations/__init__.py`` ends with ``with suppress(ImportError): from .pytorch import *``;
that line imports torch (~1.7 s) although augkit's recipes never use it. Recipes, previews
and the offline augment workers need only the numpy/OpenCV transforms, so
:func:`import_albumentations` hides ``albumentations.pytorch`` for the duration of the import
when torch is not loaded yet, then removes the block so a user's later
``from albumentations.pytorch import ToTensorV2`` still works. (Checked for 2.0.8: no other
module of albumentations imports torch at import time; ``core.utils.get_image_shape`` imports it
only for non-numpy inputs, which augkit never passes.)
"""
from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

_PYTORCH = "albumentations.pytorch"
_lock = threading.Lock()


def import_albumentations() -> ModuleType:
    """Return the ``albumentations`` module, importing it without torch when torch is not loaded."""
    mod = sys.modules.get("albumentations")
    if mod is not None:
        return mod
    # albumentations contacts PyPI on import unless this is set first (augkit/__init__ sets it too).
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with _lock:
        if "torch" in sys.modules or _PYTORCH in sys.modules:
            import albumentations  # torch is already paid for: a plain import is the cheapest
            return albumentations
        sys.modules[_PYTORCH] = None  # type: ignore[assignment]  # makes `from .pytorch import *` an ImportError
        try:
            import albumentations  # deferred: the whole point of this module (imported without torch)
        finally:
            if sys.modules.get(_PYTORCH, 0) is None:
                del sys.modules[_PYTORCH]
            # The failed relative import may have left the attribute unset or bound to None.
            pkg = sys.modules.get("albumentations")
            if pkg is not None and getattr(pkg, "pytorch", 0) is None:
                delattr(pkg, "pytorch")
        return albumentations
