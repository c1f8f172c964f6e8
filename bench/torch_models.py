"""What the PyTorch benchmarks share: the twins of basin's mlp, cnn,
resnet20, resnet56 and resnet50 presets, and the argument checkers.
Importing this module does not import torch (build does), so a script can
set its thread environment first."""
import argparse


def positive(lo):
    """argparse type: an integer >= lo."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants an integer >= {lo}, not '{s}'")
        if v < lo:
            raise argparse.ArgumentTypeError(f"wants an integer >= {lo}, not '{s}'")
        return v
    return parse


def shape(s):
    """argparse type: an image shape CxHxW of positive integers, as a tuple."""
    parts = s.split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"wants CxHxW with positive integers, not '{s}'")
    return dims


MODELS = ("mlp", "cnn", "resnet20", "resnet56", "resnet50")


def build(model, in_shape=(1, 28, 28), classes=10):
    """basin's preset `model` for inputs of in_shape (C, H, W) and `classes`
    outputs, as a torch.nn.Module. mlp and cnn are written for 1x28x28."""
    from torch import nn
    c, h, w = in_shape
    if model == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, 1024), nn.ReLU(),
            nn.Linear(1024, 1024), nn.ReLU(),
            nn.Linear(1024, classes))
    if model == "cnn":
        return nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(1024, classes))
    if model in ("resnet20", "resnet56"):
        return cifar_resnet(3 if model == "resnet20" else 9, c, classes)
    if model == "resnet50":
        import torchvision
        return torchvision.models.resnet50(num_classes=classes)
    raise ValueError(f"no PyTorch twin of model '{model}'")


def cifar_resnet(blocks, in_channels, classes):
    """He et al. 2016's CIFAR ResNet (6 * blocks + 2 layers), as basin's
    resnet20 / resnet56 presets build it:

      conv:16:3,bn,relu,                  (the stem: 3x3, 16 channels, stride 1)
      N*basic:16, basic:32:2, (N-1)*basic:32, basic:64:2, (N-1)*basic:64,
      gap, fc:classes

    basic:C[:S] = res(conv:C:3:S,bn,relu,conv:C:3,bn),relu, whose shortcut is
    the identity when the shape is kept, else a 1x1 conv of stride S without
    bias followed by bn. A conv followed by bn has no bias; the fc has one."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    layers = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for b in range(blocks):
            layers.append(Basic(cin, width, 2 if stage > 0 and b == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)
