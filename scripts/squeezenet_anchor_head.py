"""SqueezeNet's anchors scored by its conv head or through the ReLU after it: does the gate open?

    OMP_NUM_THREADS=1 python scripts/squeezenet_anchor_head.py --steps 600 --seeds 0 1

torchvision SqueezeNet 1.1 gives an image the logits ``avgpool(relu(conv(f)))``, so a map of
anchor ``a`` gets ``relu(conv(a))``. :class:`sar.SARClassifier` scores the anchors with
``conv(a)``; this script trains the same network with the anchors scored either way (and with
plain cross-entropy) on 6000 Fashion-MNIST training images padded to 32x32 (SGD, lr 0.01,
momentum 0.9, weight decay 5e-4, batch 64) and prints, per run, the step at which the gate
opened, the smallest probability the model itself gives an anchor's map for the anchor's own
class, and the accuracy on the first 2000 test images.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

import sar
from sar.data.idx import read_idx
from sar.heads import image_labels

ROOT = "/usr/share/datasets/fashion-mnist/"


def images(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(read_idx(f"{ROOT}{split}-images-idx3-ubyte.gz")[:count]).float() / 255
    y = torch.tensor(read_idx(f"{ROOT}{split}-labels-idx1-ubyte.gz")[:count]).long()
    x = F.pad((x - 0.286) / 0.353, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1)
    return x, y


def relu_of(conv: torch.nn.Conv2d):
    return lambda anchors: F.relu(F.linear(anchors, conv.weight.flatten(1), conv.bias))


def run(scoring: str, seed: int, steps: int, train, test) -> str:
    torch.manual_seed(seed)
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    model = sar.SARClassifier(net).train()
    conv = net.classifier[1]
    classifier = relu_of(conv) if scoring == "relu(conv)" else conv
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    opened = None
    for step in range(steps):
        batch = torch.randint(0, len(train[0]), (64,), generator=generator)
        x, y = train[0][batch], train[1][batch]
        (features,), logits = model.head_features_and_logits(x)
        loss = F.cross_entropy(logits, y)
        if scoring != "ce":
            losses = model.regularizer(features, image_labels(features, y), classifier)
            loss = loss + losses["loss"]
            if opened is None and bool(losses["gate_opened"]):
                opened = step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (net(test[0]).argmax(1) == test[1]).float().mean()
        anchors = model.regularizer.anchor_diagnostics(conv)["projected"]
        maps = anchors[:, :, None, None].expand(-1, -1, 2, 2)
        own = net.classifier(maps).flatten(1).softmax(1).diagonal().min()
    anchor = "" if scoring == "ce" else (f", gate opened at step {opened}, the model's smallest"
                                         f" own-class anchor probability {own:.3f}")
    return f"anchors scored by {scoring} (seed {seed}){anchor}, test accuracy {accuracy:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    train, test = images("train", 6000), images("t10k", 2000)
    for scoring in ("conv", "relu(conv)", "ce"):
        for seed in args.seeds:
            print(run(scoring, seed, args.steps, train, test), flush=True)


if __name__ == "__main__":
    main()
