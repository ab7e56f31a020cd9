"""Training-time data: the paper's augmentations, Face-Cutout and self-blended fakes."""
