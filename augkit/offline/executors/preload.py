"""Imported once by the local executor's fork server (``AugmentTask.preload``), never by the
parent: it loads what every augment worker uses (numpy, OpenCV, albumentations without torch), so
each worker forked from the server starts with them and only builds its recipe. Importing this
module *is* its job; nothing else should import it.
"""

from __future__ import annotations

import cv2

from augkit import process_setup as own_process
from augkit.albu import import_albumentations

cv2.setNumThreads(1)  # the server never runs OpenCV; its forked workers run one thread each
own_process.setup()  # augkit's own process: see augkit.process_setup
import_albumentations()
