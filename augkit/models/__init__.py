"""Models: architecture families and the head (``archs``), safe checkpoints (``checkpoint``), starting weights (``weights``)."""
