"""The 2-D U-Net that maps a normalised FLAIR slice to lesion and anatomy logits (torch, training
only)."""

from __future__ import annotations

from training.unet import UNet

DEFAULT_WIDTHS = (8, 16, 32, 64)
"""Channels per resolution level; sizes must be multiples of 2 ** (levels - 1)."""
OUTPUT_CHANNELS = ("lesion", "ventricle", "cortex", "brainstem", "cerebellum")
"""Independent sigmoid outputs: the lesions and the anatomy that places them."""


class FlairUNet(UNet):
    """2-D U-Net (``training.unet``) from a FLAIR slice to one logit map per output."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__(1, len(OUTPUT_CHANNELS), widths, dims=2)
