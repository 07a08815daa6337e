"""PATROL on your own CNN inside your own PyTorch loop (no recipe, no run folder).

A small ResNet-style classifier with its own head, written with a functional
forward, is trained on generated shapes; then PatrolPruner prunes its edge
(everything the forward runs up to ``layer2``) to half its size while the
paper's two privacy terms (switched on here; the default is plain pruning) are
added to the task loss; the pruned network is fine-tuned for one epoch with
the terms kept, split into edge and cloud, and exported to ONNX, whose outputs
are checked against torch on the test images.

    python examples/own_training_loop.py [--out DIR] [--threads N]

About a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from patrol_compress.contracts import CLOUD_ONNX, EDGE_ONNX
from patrol_compress.exporters.onnx import run_onnxruntime
from patrol_compress.exporters.parity import check_parity
from patrol_compress.metrics.flops import count_params
from patrol_compress.pruner import PatrolPruner

CLASSES = ("square", "ring", "horizontal bar", "vertical bar")
SIZE = 32


# ----------------------------------------------------------------- your data


def shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy 32x32 RGB images of one of four shapes, at a random place, size and colour."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    x = 0.25 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    for i, k in enumerate(y.tolist()):
        s = int(torch.randint(8, 14, (1,), generator=g))
        r, c = (int(v) for v in torch.randint(0, SIZE - s, (2,), generator=g))
        colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=g)
        patch = torch.zeros(s, s)
        if k == 0:
            patch[:, :] = 1
        elif k == 1:
            patch[:, :] = 1
            patch[2:-2, 2:-2] = 0
        elif k == 2:
            patch[s // 2 - 2 : s // 2 + 2, :] = 1
        else:
            patch[:, s // 2 - 2 : s // 2 + 2] = 1
        x[i, :, r : r + s, c : c + s] = torch.maximum(x[i, :, r : r + s, c : c + s], colour * patch)
    return x, y


def batches(
    x: torch.Tensor, y: torch.Tensor, size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(x) - size + 1, size):
        idx = order[i : i + size]
        yield x[idx], y[idx]


# ---------------------------------------------------------------- your model


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.down(x))


class ShapeNet(nn.Module):
    """Stem, three residual stages, and its own head: pool -> flatten -> class logits.

    Written as people write them: the forward calls its modules and functions
    directly; PatrolPruner traces it to find the edge.
    """

    def __init__(self, classes: int = len(CLASSES), width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.layer1 = Block(w, w, 1)
        self.layer2 = Block(w, 2 * w, 2)
        self.layer3 = Block(2 * w, 4 * w, 2)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


# ------------------------------------------------------------------ the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="ONNX folder (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()

    x_train, y_train = shapes(1024, seed=0)
    x_test, y_test = shapes(512, seed=1)
    model = ShapeNet()

    # 1. Your own training, as usual.
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(4):
        for xb, yb in batches(x_train, y_train, 64, seed=epoch):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc_before = accuracy(model, x_test, y_test)
    edge_before = count_params([model.stem, model.layer1, model.layer2])
    print(f"trained:  test accuracy {acc_before:.1%}, edge (stem..layer2) {edge_before:,} params")

    # 2. PATROL: masks in, privacy terms added to the task loss, FISTA on the masks.
    # The edge is everything the forward runs up to layer2 (the stem and two
    # stages: one Lipschitz block each); the mask rate follows from the steps.
    epochs, steps_per_epoch = 3, len(x_train) // 64
    pruner = PatrolPruner(
        model,
        example_inputs=x_train[:2],
        split=2,
        blocks=["layer1", "layer2", "layer3"],
        budget=0.5,
        total_steps=epochs * steps_per_epoch,
        config={
            "lipschitz": {"alphas": [0.01, 0.001], "sigma": 0.1},
            "adversarial": {"beta": 1e-3, "adversary_width": 16, "adversary_every": 1},
        },
    )
    opt = torch.optim.Adam(pruner.weights(), lr=1e-3)
    for epoch in range(epochs):
        loader = list(batches(x_train, y_train, 64, seed=10 + epoch))
        pruner.begin_epoch(loader)  # budget plan; the surrogate attacker refitted on loader
        for xb, yb in loader:
            out, privacy = pruner(xb)  # the model's logits and the terms, one edge pass
            loss = F.cross_entropy(out, yb) + privacy
            opt.zero_grad()
            pruner.backward(loss)
            opt.step()
            pruner.step()
        terms = ", ".join(f"{k} {v:.3g}" for k, v in pruner.last_terms.items())
        print(
            f"PATROL epoch {epoch + 1}: test accuracy {accuracy(model, x_test, y_test):.1%}, "
            f"edge if pruned now {pruner.projected_edge_params():,} params; {terms}"
        )

    # 3. Remove the channels (checked: the pruned net computes what the masked one did).
    pruner.prune()  # the same model object, its edge now narrower
    print(f"pruned:   test accuracy {accuracy(model, x_test, y_test):.1%} before recovery")

    # 4. A short recovery fine-tune, privacy terms kept (new optimizer: new parameters;
    #    the surrogate is a fresh one on the pruned edge, fitted at this first epoch).
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    model.train()
    loader = list(batches(x_train, y_train, 64, seed=20))
    pruner.begin_epoch(loader)
    for xb, yb in loader:
        out, privacy = pruner(xb)
        loss = F.cross_entropy(out, yb) + privacy
        opt.zero_grad()
        loss.backward()
        opt.step()
    pruner.close()  # PATROL and recovery done: the edge's BatchNorms are yours again
    acc_after = accuracy(model, x_test, y_test)
    limit = pruner.budget.params if pruner.budget is not None else 0
    print(
        f"after:    test accuracy {acc_after:.1%} (was {acc_before:.1%}), edge "
        f"{pruner.edge_params():,} params (was {edge_before:,}, budget {limit:,}), "
        f"head kept: fc {model.fc.in_features} -> {model.fc.out_features} classes"
    )

    # 5. Edge and cloud, exported to ONNX and checked against torch on the test images.
    out = args.out or Path(tempfile.mkdtemp(prefix="patrol-own-loop-")) / "onnx"
    model.eval()
    manifest = pruner.export(out, force=True)
    edge, cloud = pruner.partitions()
    with torch.no_grad():
        sent = edge(x_test[:64])
        logits = cloud(sent)
    onnx_sent = run_onnxruntime(out / EDGE_ONNX, x_test[:64].numpy())
    onnx_logits = run_onnxruntime(out / CLOUD_ONNX, onnx_sent)
    err_edge = check_parity(EDGE_ONNX, onnx_sent, sent.numpy(), "fp32")
    err_cloud = check_parity(CLOUD_ONNX, onnx_logits, logits.numpy(), "fp32")
    onnx_acc = float((torch.from_numpy(onnx_logits).argmax(1) == y_test[:64]).float().mean())
    print(
        f"exported: {out / EDGE_ONNX} ({manifest['edge']['params']:,} params) and "
        f"{out / CLOUD_ONNX}; parity max |error| edge {err_edge:.2g}, cloud {err_cloud:.2g}; "
        f"ONNX split accuracy on 64 test images {onnx_acc:.1%}"
    )
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
