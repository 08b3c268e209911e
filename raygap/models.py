"""Image classifiers that take inputs in [0, 1] and normalise inside `forward`.

Every model is a `Classifier`: a backbone that maps an image to its pooled penultimate feature,
an optional `neck` (a residual MLP of the feature, which DRRDN trains), and a linear `head`.
The defences reach the feature and the head separately through `features()` and `head`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raygap.errors import UserError


class Classifier(nn.Module):
    """backbone -> neck -> head, with the data set's normalisation kept as buffers."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, mean, std,
                 neck: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()  # keeps the feature dimension
        self.feature_dim = feature_dim
        self.head = nn.Linear(self.feature_dim, num_classes)
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate feature f = g(x) for an input in [0, 1]."""
        return self.neck(self.backbone((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """The four-convolution CNN used for MNIST-sized inputs (as in TRADES), for any input size >= 4."""

    def __init__(self, in_shape, feature_dim: int = 200):
        super().__init__()
        channels, height, width = in_shape
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 64 * (height // 4) * (width // 4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, feature_dim), nn.ReLU(),
                                nn.Linear(feature_dim, feature_dim), nn.ReLU())

    def forward(self, x):
        return self.fc(self.convs(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """The pre-activation residual block of PreAct ResNet-18 and of WideResNet."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class ResNet18(nn.Module):
    """The CIFAR ResNet-18: 3x3 stem, no max-pool, about 1.1 GFLOP per 32x32 forward."""

    def __init__(self, in_shape, preact: bool = False):
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        layers, cin = [], 64
        for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
            layers.append(block(cin, cout, stride))
            cin = cout
        stem = [nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)]
        if not preact:
            stem += [nn.BatchNorm2d(64), nn.ReLU()]
        tail = [nn.BatchNorm2d(512), nn.ReLU()] if preact else []
        self.net = nn.Sequential(*stem, *layers, *tail, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class WideResNet(nn.Module):
    """WRN-depth-widen as used by Madry et al. and TRADES (WRN-34-10: 46M parameters)."""

    def __init__(self, in_shape, depth: int = 34, widen: int = 10):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers, cin = [nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=False)], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(PreActBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        return self.net(x)


def imagenet_resnet(depth: int, in_shape) -> nn.Module:
    """torchvision's ImageNet ResNet-18 or -50 (7x7 stem, max-pool) without its classifier: the pooled
    feature. torchvision's own weights load into it (`checkpoint.load_start`)."""
    import torchvision

    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    if in_shape[0] != 3:
        net.conv1 = nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False)
    net.fc = nn.Identity()
    return net


# name -> (backbone builder, feature dimension, smallest input side it accepts)
BACKBONES = {
    "smallcnn": (lambda shape: SmallCNN(shape), 200, 4),
    "resnet18": (lambda shape: ResNet18(shape), 512, 8),
    "preact_resnet18": (lambda shape: ResNet18(shape, preact=True), 512, 8),
    "wrn34_10": (lambda shape: WideResNet(shape), 640, 8),
    "resnet18_imagenet": (lambda shape: imagenet_resnet(18, shape), 512, 32),
    "resnet50_imagenet": (lambda shape: imagenet_resnet(50, shape), 2048, 32),
}


class ResidualMLP(nn.Module):
    """f + U relu(V f + a) + c with hidden width `width`; U and c start at zero, so the map starts as the
    identity (a neck added to a pre-trained classifier leaves its logits unchanged at the start)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.width = width
        self.inner = nn.Linear(dim, width)
        self.outer = nn.Linear(width, dim)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, f):
        return f + self.outer(F.relu(self.inner(f)))


def build_model(name: str, in_shape, num_classes: int, mean, std, neck_width: int = 0) -> Classifier:
    """A `Classifier` for images of shape (C, H, W); `neck_width` > 0 adds a ResidualMLP neck before the head."""
    if name not in BACKBONES:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(BACKBONES)}")
    make, feature_dim, min_side = BACKBONES[name]
    if min(in_shape[1:]) < min_side:
        raise UserError(f"model '{name}' needs images of at least {min_side}x{min_side}, "
                        f"the data has {in_shape[1]}x{in_shape[2]}")
    if len(mean) != in_shape[0]:
        raise UserError(f"data.mean has {len(mean)} channels but the images have {in_shape[0]}")
    neck = ResidualMLP(feature_dim, neck_width) if neck_width else None
    return Classifier(make(tuple(in_shape)), feature_dim, num_classes, mean, std, neck)


def forward_flops(model: nn.Module, in_shape) -> int:
    """FLOPs of one forward pass of one image, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(1, *in_shape, device=param.device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops()
