"""The albumentations transform behind the ``trivial_augment`` and ``rand_augment`` ops.

A separate module because it subclasses an albumentations class, so importing it imports
albumentations: :mod:`augkit.recipe.policies.register` (the op table) stays cheap. Importing this module also
registers the class with albumentations' serializer, which is what ``albumentations.load`` of
an exported recipe with a policy needs (``import augkit.recipe.policies.transform`` first).

It is a dual transform: the drawn ops move keypoints (albumentations' pixel-index convention, the
one OpenCV's warps use) and masks (nearest neighbour, filled with ``fill_mask``) through the same
matrices as the pixels, so labelled datasets (:mod:`augkit.labels.geometry`) can use the policies.
Pixel-only ops (colour, posterize, ...) leave keypoints and masks alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from augkit.albu import import_albumentations
from augkit.recipe.policies.functional import POLICIES, apply_op, draw_ops

A = import_albumentations()
_T = A.core.type_definitions.Targets
_DualTransform: Any = A.DualTransform  # a module bound at run time: typed Any for the subclass below

#: the policy ops that move pixels (the others change colours only)
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def inverse_matrix(name: str, magnitude: float, height: int, width: int) -> np.ndarray | None:
    """The 2x3 matrix ``apply_op`` warps with (output pixel index -> input pixel index), None for a
    pixel-only op. Written from the kernels in :mod:`augkit.recipe.policies.functional`; a test warps
    with it and compares the pixels with ``apply_op`` for every geometric op."""
    m = float(magnitude)
    if name == "ShearX":
        return np.array([[1.0, m, 0.5 * m], [0.0, 1.0, 0.0]])
    if name == "ShearY":
        return np.array([[1.0, 0.0, 0.0], [m, 1.0, 0.5 * m]])
    if name in ("TranslateX", "TranslateY"):
        t = int(m)
        return np.array(
            [[1.0, 0.0, -t if name == "TranslateX" else 0.0], [0.0, 1.0, -t if name == "TranslateY" else 0.0]]
        )
    if name == "Rotate":
        a = math.radians(m)
        cx, cy = (width - 1) * 0.5, (height - 1) * 0.5
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]])
    return None


def _forward(inverse: np.ndarray) -> np.ndarray:
    """The 2x3 matrix that maps input points to output points (the inverse of ``inverse``)."""
    full = np.vstack([inverse, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


class PolicyAugment(_DualTransform):
    """Draw ops and magnitudes with the pipeline's ``py_random`` (so one seed decides them), apply
    them in turn to the image, its masks and its keypoints; ``params["ops"]`` lists what was drawn
    (augkit's manifest records it)."""

    _targets = (_T.IMAGE, _T.MASK, _T.KEYPOINTS)

    def __init__(
        self,
        policy: str = "trivial_augment",
        num_ops: int = 1,
        magnitude_bin: int | None = None,
        only: tuple[str, ...] = (),
        sign: int = 0,
        border_mode: int = 0,
        fill: Any = 0,
        fill_mask: int = 0,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.policy, self.num_ops, self.magnitude_bin = policy, int(num_ops), magnitude_bin
        self.only, self.sign, self.border_mode = tuple(only), int(sign), int(border_mode)
        self.fill = tuple(fill) if isinstance(fill, list) else fill
        self.fill_mask = fill_mask

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {
            "ops": draw_ops(self.policy, self.num_ops, self.magnitude_bin, h, w, self.py_random, self.only, self.sign)
        }

    def apply(self, img: np.ndarray, ops: Sequence[dict] = (), **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{self.policy} works on RGB uint8 images, got {img.dtype} {img.shape}")
        for d in ops:
            img = apply_op(img, d["op"], d["magnitude"], self.border_mode, self.fill)
        return img

    def apply_to_mask(self, mask: np.ndarray, ops: Sequence[dict] = (), **params: Any) -> np.ndarray:
        """The geometric ops on a mask (H, W): the same nearest-neighbour warp, filled with ``fill_mask``."""
        for d in ops:
            if d["op"] in GEOMETRIC_OPS:
                mask = apply_op(mask, d["op"], d["magnitude"], self.border_mode, self.fill_mask)
        return mask

    def apply_to_keypoints(self, keypoints: np.ndarray, ops: Sequence[dict] = (), **params: Any) -> np.ndarray:
        """The geometric ops on keypoints (N, 2+: x, y, ... in pixel-index coordinates)."""
        h, w = params["shape"][:2]
        out = np.array(keypoints, dtype=np.float64, copy=True)
        for d in ops:
            inv = inverse_matrix(d["op"], d["magnitude"], h, w)
            if inv is None or not len(out):
                continue
            fwd = _forward(inv)
            xy = out[:, :2] @ fwd[:, :2].T + fwd[:, 2]
            out[:, 0], out[:, 1] = xy[:, 0], xy[:, 1]
        return out.astype(keypoints.dtype) if isinstance(keypoints, np.ndarray) else out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy", "num_ops", "magnitude_bin", "only", "sign", "border_mode", "fill", "fill_mask")
