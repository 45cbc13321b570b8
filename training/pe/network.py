"""The 3-D U-Net that maps a two-window CT patch to embolus, artery and trunk logits (torch)."""

from __future__ import annotations

from training.unet import UNet

DEFAULT_WIDTHS = (8, 16, 32, 48)
"""Channels per resolution level; the input size must be a multiple of 2 ** (levels - 1)."""
IN_CHANNELS = 2
"""Lung window and vascular window of the same HU volume (see ``preprocess.normalise``)."""
OUT_CHANNELS = 3
"""Independent (sigmoid) logits: embolus, pulmonary artery lumen (emboli included, trunk to
segmental arteries), pulmonary trunk."""


class EmbolusUNet(UNet):
    """U-Net (``training.unet``) from the two-window CT to ``OUT_CHANNELS`` logits."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__(IN_CHANNELS, OUT_CHANNELS, widths, dims=3)
