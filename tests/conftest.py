"""Shared fixtures. Keep this file small: fixtures used by one test file belong in that file."""

import os

os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # before anything imports albumentations

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _photo() -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.chelsea(), (96, 64), interpolation=cv2.INTER_AREA)


@pytest.fixture
def photo(_photo) -> np.ndarray:
    """A small real RGB uint8 photo (scikit-image's chelsea the cat, 96x64); a fresh copy per test."""
    return _photo.copy()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits 0, 1 and 2 and their labels (tests/_tinymodel.py's digits3)."""
    from _tinymodel import digits3

    return digits3()
