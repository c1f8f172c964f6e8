"""What the PyTorch benchmarks share: the twins of basin's mlp and cnn
presets, and the argument checker. Importing this module does not import
torch (build does), so a script can set its thread environment first."""
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


def build(model):
    """basin's `mlp` or `cnn` preset as a torch.nn.Sequential."""
    from torch import nn
    if model == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 1024), nn.ReLU(),
            nn.Linear(1024, 1024), nn.ReLU(),
            nn.Linear(1024, 10))
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(1024, 10))
