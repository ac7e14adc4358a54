"""A small torch classifier of handwritten digits: the model under test of this example.

The data is scikit-learn's bundled 8x8 digits (1797 images, no download): 360 held-out images
are the evaluation's docs, the rest trains. The model is saved as safetensors in a folder, so
the plugin knows it by a hash of its files.

    python digits.py train                                # digits_model/ (seeded, a few seconds)
    python digits.py damage --noise 0.4                   # digits_model_damaged/: noisy weights
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HELD_OUT = 360  # images kept out of training: the evaluation's docs
HIDDEN = 32


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images scaled to [0, 1], labels, held-out ids, training ids); ids index the dataset."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    images = (data.data / 16.0).astype(np.float32)
    return images, data.target.astype(np.int64), np.sort(order[:HELD_OUT]), order[HELD_OUT:]


def held_out(limit: int | float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc ids, images, labels) of the evaluation split, its first ``limit`` docs if given."""
    images, labels, test_ids, _ = load_data()
    if limit is not None:
        test_ids = test_ids[: int(limit) if limit >= 1 else int(np.ceil(len(test_ids) * limit))]
    return test_ids, images[test_ids], labels[test_ids]


def build(hidden: int = HIDDEN) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def train(folder: Path, *, epochs: int = 20, seed: int = 0) -> Path:
    """Train on the training split (seeded) and save to ``folder``."""
    torch.manual_seed(seed)
    images, labels, _, train_ids = load_data()
    inputs, targets = torch.from_numpy(images[train_ids]), torch.from_numpy(labels[train_ids])
    model = build()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    order = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to threads
    try:
        for _ in range(epochs):
            for batch in torch.randperm(len(targets), generator=order).split(64):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return save(model, folder)


def save(model: torch.nn.Module, folder: Path) -> Path:
    """Weights and config into ``folder``, atomically (a temp folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(staging / "model.safetensors"))
    (staging / "config.json").write_text(json.dumps({"hidden": HIDDEN}) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def load(folder: str | Path) -> torch.nn.Module:
    config = json.loads((Path(folder) / "config.json").read_text())
    model = build(config["hidden"])
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model.eval()


def damage(source: Path, target: Path, *, noise: float, seed: int = 0) -> Path:
    """The same model with Gaussian noise (``noise`` times each tensor's std) on its weights."""
    model = load(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * noise * tensor.std())
    return save(model, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "damage"))
    parser.add_argument("--out", type=Path, help="model folder to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.4, help="damage: noise in weight stds")
    parser.add_argument("--source", type=Path, default=Path("digits_model"), help="damage: model")
    args = parser.parse_args()
    if args.command == "train":
        print(train(args.out or Path("digits_model"), epochs=args.epochs))
    else:
        print(damage(args.source, args.out or Path("digits_model_damaged"), noise=args.noise))


if __name__ == "__main__":
    main()
