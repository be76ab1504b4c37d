"""The two networks, written from their published architectures (torch).

* :class:`SyncNet`: Chung & Zisserman, "Out of time: automated lip sync in the
  wild" (ACCV 2016 workshops), the v2 model that ``syncnet_v2.model`` holds: a
  3D-conv lip stream over 5 frames of a 224x224 face crop and a 2D-conv audio
  stream over 20 MFCC frames (13 coefficients), each ending in a 1024-d
  embedding.
* :class:`S3FDNet`: Zhang et al., "S3FD: single shot scale-invariant face
  detector" (ICCV 2017): VGG16 to fc7, two extra layers, L2-normalised
  conv3_3/4_3/5_3, six box/score heads, max-out background on conv3_3.

The module and parameter names are the ones the published weight files use
(``netcnnlip.0.weight``, ``vgg.0.weight``, ``L2Norm3_3.weight``, …), so a
file loads by name.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

EMBEDDING = 1024


def _stack(spec, conv, norm, pool) -> nn.Sequential:
    """Conv/BN/ReLU(/pool) blocks from ``(in, out, kernel, stride, padding, pool)`` rows."""
    layers: list[nn.Module] = []
    for c_in, c_out, kernel, stride, padding, pool_args in spec:
        layers += [conv(c_in, c_out, kernel_size=kernel, stride=stride, padding=padding), norm(c_out), nn.ReLU(inplace=True)]
        if pool_args is not None:
            layers.append(pool(**pool_args))
    return nn.Sequential(*layers)


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING))


class SyncNet(nn.Module):
    """SyncNet v2: ``forward_lip`` on (N, 3, 5, 224, 224) BGR 0..255, ``forward_aud`` on (N, 1, 13, 20) MFCC."""

    AUDIO = (
        (1, 64, (3, 3), (1, 1), (1, 1), {"kernel_size": (1, 1), "stride": (1, 1)}),
        (64, 192, (3, 3), (1, 1), (1, 1), {"kernel_size": (3, 3), "stride": (1, 2)}),
        (192, 384, (3, 3), 1, (1, 1), None),
        (384, 256, (3, 3), 1, (1, 1), None),
        (256, 256, (3, 3), 1, (1, 1), {"kernel_size": (3, 3), "stride": (2, 2)}),
        (256, 512, (5, 4), 1, (0, 0), None),
    )
    LIP = (
        (3, 96, (5, 7, 7), (1, 2, 2), 0, {"kernel_size": (1, 3, 3), "stride": (1, 2, 2)}),
        (96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1), {"kernel_size": (1, 3, 3), "stride": (1, 2, 2), "padding": (0, 1, 1)}),
        (256, 256, (1, 3, 3), 1, (0, 1, 1), None),
        (256, 256, (1, 3, 3), 1, (0, 1, 1), None),
        (256, 256, (1, 3, 3), 1, (0, 1, 1), {"kernel_size": (1, 3, 3), "stride": (1, 2, 2)}),
        (256, 512, (1, 6, 6), 1, 0, None),
    )

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = _stack(self.AUDIO, nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = _stack(self.LIP, nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * (x / norm)


def _vgg() -> nn.ModuleList:
    layers: list[nn.Module] = []
    c_in = 3
    for block, (c_out, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for _ in range(convs):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=block == 2))
    layers += [nn.Conv2d(512, 1024, 3, 1, padding=6, dilation=6), nn.ReLU(inplace=True), nn.Conv2d(1024, 1024, 1, 1), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class S3FDNet(nn.Module):
    """S3FD; ``forward`` returns box offsets (N, P, 4) and face probabilities (N, P) for :func:`priors`."""

    #: Indices in ``vgg`` after which conv3_3, conv4_3, conv5_3 and fc7 are taken as sources.
    SOURCES = (16, 23, 30, 35)
    HEAD_CHANNELS = (256, 512, 512, 1024, 512, 256)

    def __init__(self) -> None:
        super().__init__()
        self.vgg = _vgg()
        self.L2Norm3_3 = L2Norm(256, 10)
        self.L2Norm4_3 = L2Norm(512, 8)
        self.L2Norm5_3 = L2Norm(512, 5)
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1, 1), nn.Conv2d(256, 512, 3, 2, padding=1), nn.Conv2d(512, 128, 1, 1), nn.Conv2d(128, 256, 3, 2, padding=1)])
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, 1, padding=1) for c in self.HEAD_CHANNELS])
        self.conf = nn.ModuleList([nn.Conv2d(c, 4 if i == 0 else 2, 3, 1, padding=1) for i, c in enumerate(self.HEAD_CHANNELS)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        sources = []
        start = 0
        norms = (self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3, None)
        for end, norm in zip(self.SOURCES, norms):
            for k in range(start, end):
                x = self.vgg[k](x)
            sources.append(norm(x) if norm is not None else x)
            start = end
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        locs, confs, shapes = [], [], []
        for i, src in enumerate(sources):
            conf = self.conf[i](src)
            if i == 0:  # max-out background: three background scores, one face score
                conf = torch.cat((conf[:, 0:3].max(dim=1, keepdim=True).values, conf[:, 3:]), dim=1)
            locs.append(self.loc[i](src).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
            confs.append(conf.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 2))
            shapes.append((src.shape[2], src.shape[3]))
        scores = F.softmax(torch.cat(confs, 1), dim=-1)[..., 1]
        return torch.cat(locs, 1), scores, shapes
