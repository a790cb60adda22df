"""The albumentations transform behind the ``trivial_augment`` and ``rand_augment`` ops.

A separate module because it subclasses an albumentations class, so importing it imports
albumentations: :mod:`augkit.recipe.policies.register` (the op table) stays cheap. Importing this module also
registers the class with albumentations' serializer, which is what ``albumentations.load`` of
an exported recipe with a policy needs (``import augkit.recipe.policies.transform`` first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from augkit.albu import import_albumentations
from augkit.recipe.policies.functional import POLICIES, apply_op, draw_ops

A = import_albumentations()


class PolicyAugment(A.ImageOnlyTransform):
    """Draw ops and magnitudes with the pipeline's ``py_random`` (so one seed decides them), apply
    them in turn; ``params["ops"]`` lists what was drawn (augkit's manifest records it)."""

    def __init__(
        self,
        policy: str = "trivial_augment",
        num_ops: int = 1,
        magnitude_bin: int | None = None,
        only: tuple[str, ...] = (),
        sign: int = 0,
        border_mode: int = 0,
        fill: Any = 0,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.policy, self.num_ops, self.magnitude_bin = policy, int(num_ops), magnitude_bin
        self.only, self.sign, self.border_mode = tuple(only), int(sign), int(border_mode)
        self.fill = tuple(fill) if isinstance(fill, list) else fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {
            "ops": draw_ops(self.policy, self.num_ops, self.magnitude_bin, h, w, self.py_random, self.only, self.sign)
        }

    def apply(self, img: np.ndarray, ops: list[dict] = (), **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{self.policy} works on RGB uint8 images, got {img.dtype} {img.shape}")
        for d in ops:
            img = apply_op(img, d["op"], d["magnitude"], self.border_mode, self.fill)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy", "num_ops", "magnitude_bin", "only", "sign", "border_mode", "fill")
