"""The 2-D U-Net that maps a normalised FLAIR slice to lesion and anatomy logits (torch, training
only)."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTHS = (8, 16, 32, 64)
"""Channels per resolution level; sizes must be multiples of 2 ** (levels - 1)."""
OUTPUT_CHANNELS = ("lesion", "ventricle", "cortex", "brainstem", "cerebellum")
"""Independent sigmoid outputs: the lesions and the anatomy that places them."""


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FlairUNet(nn.Module):
    """U-Net with max-pool down and transposed-conv up paths; one logit map per output."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        self.widths = widths
        self.down = nn.ModuleList()
        c_in = 1
        for w in widths:
            self.down.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.dec.append(_block(2 * w_lo, w_lo))
        self.head = nn.Conv2d(widths[0], len(OUTPUT_CHANNELS), 1)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return int(2 ** (len(self.widths) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        out: torch.Tensor = self.head(x)
        return out


class ProbabilityModel(nn.Module):
    """The U-Net with a sigmoid, for export: input (N, 1, H, W), output (N, 5, H, W)."""

    def __init__(self, net: FlairUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
