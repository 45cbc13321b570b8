"""The U-Net shared by the segmentation networks (lung nodule and PE in 3-D, MS lesion in 2-D)
and the sigmoid wrapper their exports use (torch, training and export only)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d),
}


def _block(dims: Literal[2, 3], c_in: int, c_out: int) -> nn.Sequential:
    conv, norm, _, _ = _LAYERS[dims]
    return nn.Sequential(
        conv(c_in, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        conv(c_out, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with two conv + batch-norm + ReLU per level, max-pool down and transposed-conv up
    paths with skip connections, and a 1x1 head of ``out_channels`` logits."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: tuple[int, ...],
        dims: Literal[2, 3] = 3,
    ) -> None:
        super().__init__()
        conv, _, pool, up = _LAYERS[dims]
        self.widths = widths
        self.down = nn.ModuleList()
        c_in = in_channels
        for w in widths:
            self.down.append(_block(dims, c_in, w))
            c_in = w
        self.pool = pool(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(up(w_hi, w_lo, 2, stride=2))
            self.dec.append(_block(dims, 2 * w_lo, w_lo))
        self.head = conv(widths[0], out_channels, 1)

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
    """Export wrapper: the network's logits through a sigmoid (independent probabilities)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
