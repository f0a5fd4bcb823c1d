"""PyTorch definitions of the layouts :func:`~ipguard_jax.convert.from_torch` maps that
torchvision lacks: the CIFAR ResNet and the zoo's small CNN.

Train one of these in PyTorch and convert it; the attribute names are those the converter
expects (akamaster/pytorch_resnet_cifar10 for the ResNet). Importing this module needs torch.

Example:
    >>> from ipguard_jax.convert import from_torch
    >>> from ipguard_jax.convert.torch_reference import CifarResNet
    >>> clf = from_torch(CifarResNet(20).eval(), input_shape=(32, 32, 3))  # doctest: +SKIP
    >>> clf.num_classes  # doctest: +SKIP
    10
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn import functional as F

__all__ = ["CifarBlock", "CifarResNet", "ConvBNReLU", "PadShortcut", "TorchCNN"]


class CifarBlock(nn.Module):
    """CIFAR ResNet basic block.

    Args:
        cin: input channels.
        cout: output channels.
        stride: stride of the first convolution (and of the shortcut).
        option: the shortcut where the shape changes: ``"B"``, a 1x1 convolution with
            BatchNorm (what the converter maps), or ``"A"``, akamaster's zero-padded identity
            (which the converter rejects with a clear error).
    """

    def __init__(self, cin: int, cout: int, stride: int, option: str = "B"):
        super().__init__()
        if option not in ("A", "B"):
            raise ValueError(f"option must be 'A' or 'B', got {option!r}")
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            if option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            else:
                self.shortcut = PadShortcut(cout - cin)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PadShortcut(nn.Module):
    """akamaster's option A shortcut: subsample by 2 and zero-pad the channels."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra // 2))


class CifarResNet(nn.Module):
    """The common CIFAR ResNet: depth ``6n + 2``, three stages, global average pool, ``linear``.

    The PyTorch twin of :class:`ipguard_jax.models.CifarResNet` (ResNet-20: 0.27 M parameters).
    It takes normalised NCHW images; wrap it to normalise [0, 1] inputs if needed.

    Args:
        depth: ``6n + 2`` (20, 32, 56, ...).
        num_classes: outputs of the head.
        widths: channels of the three stages.
        option: the shortcut kind (see :class:`CifarBlock`).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), option: str = "B"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin, stages = widths[0], []
        for i, width in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(CifarBlock(cin, width, 2 if i > 0 and b == 0 else 1, option))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


class ConvBNReLU(nn.Module):
    """3x3 convolution (no bias), BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TorchCNN(nn.Module):
    """The zoo's ``cnn`` layout: conv-BN-ReLU stages with 2x2 max pools, GAP, ``head``.

    Args:
        in_channels: image channels.
        num_classes: outputs of the head.
        widths: channels of the stages (one conv each).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        stages, cin = [], in_channels
        for width in widths:
            stages.append(nn.ModuleList([ConvBNReLU(cin, width)]))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        for stage in self.stages:
            for block in stage:
                x = block(x)
            if min(x.shape[2], x.shape[3]) >= 2:
                x = F.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))
