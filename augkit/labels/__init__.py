"""Labelled datasets (YOLO, COCO, Pascal VOC, mask folders): one in-memory model (``model``), a reader
and writer per format, layout detection, label checks, and moving labels through a recipe (``geometry``)."""
