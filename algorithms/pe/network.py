"""The 3-D U-Net that maps a two-window CT patch to embolus, artery and trunk logits (torch)."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTHS = (8, 16, 32, 48)
"""Channels per resolution level; the input size must be a multiple of 2 ** (levels - 1)."""
IN_CHANNELS = 2
"""Lung window and vascular window of the same HU volume (see ``preprocess.normalise``)."""
OUT_CHANNELS = 3
"""Independent (sigmoid) logits: embolus, pulmonary artery lumen (emboli included, trunk to
segmental arteries), pulmonary trunk."""


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class EmbolusUNet(nn.Module):
    """U-Net with max-pool down and transposed-conv up paths; ``OUT_CHANNELS`` logits."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        self.widths = widths
        self.down = nn.ModuleList()
        c_in = IN_CHANNELS
        for w in widths:
            self.down.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(nn.ConvTranspose3d(w_hi, w_lo, 2, stride=2))
            self.dec.append(_block(2 * w_lo, w_lo))
        self.head = nn.Conv3d(widths[0], OUT_CHANNELS, 1)

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
    """Export wrapper: input (N, 2, D, H, W); output (N, 3, D, H, W) probabilities of
    embolus, pulmonary artery and pulmonary trunk."""

    def __init__(self, net: EmbolusUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
