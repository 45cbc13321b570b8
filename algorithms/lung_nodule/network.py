"""The compact 3-D U-Net that maps a normalised CT patch to nodule logits (torch, training only)."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTHS = (8, 16, 32, 48)
"""Channels per resolution level; the input size must be a multiple of 2 ** (levels - 1)."""


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class NoduleUNet(nn.Module):
    """U-Net with max-pool down and transposed-conv up paths; one output channel of logits."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        self.widths = widths
        self.down = nn.ModuleList()
        c_in = 1
        for w in widths:
            self.down.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(nn.ConvTranspose3d(w_hi, w_lo, 2, stride=2))
            self.dec.append(_block(2 * w_lo, w_lo))
        self.head = nn.Conv3d(widths[0], 1, 1)

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
    """Wraps the U-Net with a sigmoid for export: input (N, 1, D, H, W), output probabilities."""

    def __init__(self, net: NoduleUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


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


class CandidateProbability(nn.Module):
    """Wraps the classifier for export: input (N, 2, 32, 32, 32), output (N, 1) probabilities."""

    def __init__(self, net: CandidateNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))
