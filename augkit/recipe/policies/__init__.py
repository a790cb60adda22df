"""TrivialAugment and RandAugment: op tables and uint8 kernels (``functional``), their albumentations transform (``transform``), and their registration as recipe ops (``register``)."""
