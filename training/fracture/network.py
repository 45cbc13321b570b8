"""The 2-D fracture heatmap network: fracture-line probability at 1/4 of the input size
(torch, training only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

OUTPUT_STRIDE = 4
"""Input pixels per output cell along each axis."""
DEFAULT_WIDTHS = (16, 32, 48, 64)
"""Channels at 1/2, 1/4, 1/8 and 1/16 of the input size."""


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FractureNet(nn.Module):
    """Encoder to 1/16 (space-to-depth stem, strided and dilated 3x3 convs) and a U-Net-like
    decoder back to 1/4 with additive skips; one output channel of fracture-line logits."""

    def __init__(self, widths: tuple[int, int, int, int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.widths = widths
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), _conv(4, w1), _conv(w1, w1))
        self.down2 = nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2))
        self.down3 = nn.Sequential(_conv(w2, w3, stride=2), _conv(w3, w3), _conv(w3, w3, 1, 2))
        self.down4 = nn.Sequential(_conv(w3, w4, stride=2), _conv(w4, w4), _conv(w4, w4, 1, 2))
        self.lateral3 = nn.Conv2d(w4, w3, 1)
        self.merge3 = _conv(w3, w3)
        self.lateral2 = nn.Conv2d(w3, w2, 1)
        self.merge2 = _conv(w2, w2)
        self.head = nn.Sequential(_conv(w2, w2), nn.Conv2d(w2, 1, 1))
        final = self.head[-1]
        assert isinstance(final, nn.Conv2d) and final.bias is not None
        nn.init.constant_(final.bias, -4.0)  # start near "no fracture" everywhere

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.stem(x)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        f4 = self.down4(f3)
        u3 = self.merge3(f3 + F.interpolate(self.lateral3(f4), scale_factor=2.0, mode="nearest"))
        u2 = self.merge2(f2 + F.interpolate(self.lateral2(u3), scale_factor=2.0, mode="nearest"))
        out: torch.Tensor = self.head(u2)
        return out


class ExportModel(nn.Module):
    """For ONNX: input (N, 1, H, W) in [0, 1]; output (N, 1, H/4, W/4) probabilities,
    sigmoid(scale * logit + shift). The scale and shift (Platt scaling, fitted on validation
    images after training) keep the probabilities below float32's 1.0, which a network
    trained with heavily weighted positives otherwise reaches, and make the study-level
    maximum a calibrated probability; they do not change the ranking of cells or images."""

    def __init__(self, net: FractureNet, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.shift = float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x) * self.scale + self.shift)
