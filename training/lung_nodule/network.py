"""The compact 3-D U-Net that maps a normalised CT patch to nodule logits (torch, training only)."""

from __future__ import annotations

import torch
from torch import nn

from training.unet import UNet

DEFAULT_WIDTHS = (8, 16, 32, 48)
"""Channels per resolution level; the input size must be a multiple of 2 ** (levels - 1)."""


class NoduleUNet(UNet):
    """U-Net (``training.unet``) from a normalised CT patch to one channel of logits."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__(1, 1, widths, dims=3)


CLASSIFIER_WIDTHS = (8, 16, 32)
"""Channels of the candidate classifier at 1/1, 1/2 and 1/4 of the patch resolution."""


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU()]


class CandidateNet(nn.Module):
    """Stage-2 classifier: a 32^3 cube (CT and stage-1 probability channels) around a
    candidate -> logit of "nodule".

    One conv at full resolution, two at 1/2 and two at 1/4 (max-pool between), a 1x1x1
    reduction at 1/8, then a small fully connected head over the 4^3 positions (the candidate
    is at the centre, so position matters).
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = CLASSIFIER_WIDTHS,
        patch: int = 32,
        channels: int = 2,
    ) -> None:
        super().__init__()
        if patch % 8:
            raise ValueError("patch must be a multiple of 8")
        self.widths = widths
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_conv(channels, w1),
            nn.MaxPool3d(2),
            *_conv(w1, w2),
            *_conv(w2, w2),
            nn.MaxPool3d(2),
            *_conv(w2, w3),
            *_conv(w3, w3),
            nn.MaxPool3d(2),
            nn.Conv3d(w3, 16, 1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(16 * (patch // 8) ** 3, 32),
            nn.ReLU(),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out
