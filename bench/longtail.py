"""Long-tailed Fashion-MNIST: a fixed, seeded subset of the train split whose class sizes fall
geometrically from 6,000 (T-shirt/top) to 600 (Ankle boot), an imbalance ratio of 10.

    python bench/longtail.py data/fashion-mnist-longtail
    selfclassifier train --config fashion_mnist_cpu --data data/fashion-mnist-longtail \\
        --split train --out runs/fmnist-lt-s0

OUT gets the subset as IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz:
24,523 images), a copy of the balanced test split (t10k-*, 10,000 images: kNN and the linear
probe of ``selfclassifier evaluate`` use it as queries), ``train-indices.txt`` (which rows of
the source's train split were kept, one per line) and ``longtail.json`` (sizes, seed, source,
a SHA-256 of the indices). Keep "fashion" in OUT's name: the reader names the classes from it.
``--largest N --smallest N`` writes a balanced subset of N per class, the control.

Class k keeps ``round(largest * (smallest / largest) ** (k / 9))`` images, drawn without
replacement by the ``seed``: the smallest keys of ``default_rng(seed).random(n_k)`` per class
(doubles, the most stable of numpy's random streams), kept in the source's order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

from selfclassifier.data.arrays import FASHION_MNIST_DIR, load_idx_dataset, write_idx

LARGEST, SMALLEST, SEED = 6000, 600, 0


def class_sizes(classes: int = 10, largest: int = LARGEST, smallest: int = SMALLEST) -> list[int]:
    """Sizes falling geometrically from ``largest`` (class 0) to ``smallest`` (the last).

    >>> class_sizes()
    [6000, 4646, 3597, 2785, 2156, 1670, 1293, 1001, 775, 600]
    """
    if classes < 2 or not 0 < smallest <= largest:
        raise ValueError(f"need classes >= 2 and 0 < smallest <= largest, got {classes}, "
                         f"{smallest}, {largest}")  # fmt: skip
    ratio = smallest / largest
    return [round(largest * ratio ** (k / (classes - 1))) for k in range(classes)]


def longtail_indices(labels: np.ndarray, sizes: list[int], seed: int = SEED) -> np.ndarray:
    """Sorted row indices keeping ``sizes[k]`` rows of each label k, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    keep = []
    for k, n in enumerate(sizes):
        rows = np.flatnonzero(labels == k)
        if n > len(rows):
            raise ValueError(f"class {k} has {len(rows)} images, fewer than the {n} asked for")
        keys = rng.random(len(rows))
        keep.append(rows[np.argsort(keys, kind="stable")[:n]])
    return np.sort(np.concatenate(keep))


def digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def write_longtail(
    out: str,
    source: str = FASHION_MNIST_DIR,
    largest: int = LARGEST,
    smallest: int = SMALLEST,
    seed: int = SEED,
) -> dict:
    """Write the subset of ``source``'s train split (and its whole test split) to ``out``;
    returns what ``longtail.json`` records."""
    train = load_idx_dataset(source, "train")  # a one-line DataError names what is missing
    images, labels = train.images[:, 0].numpy(), train.targets.numpy()
    sizes = class_sizes(int(labels.max()) + 1, largest, smallest)
    keep = longtail_indices(labels, sizes, seed)
    os.makedirs(out, exist_ok=True)
    write_idx(os.path.join(out, "train-images-idx3-ubyte.gz"), images[keep])
    write_idx(os.path.join(out, "train-labels-idx1-ubyte.gz"), labels[keep])
    test = load_idx_dataset(source, "test")
    write_idx(os.path.join(out, "t10k-images-idx3-ubyte.gz"), test.images[:, 0].numpy())
    write_idx(os.path.join(out, "t10k-labels-idx1-ubyte.gz"), test.targets.numpy())
    np.savetxt(os.path.join(out, "train-indices.txt"), keep, fmt="%d")
    info = {
        "source": os.path.abspath(source),
        "seed": seed,
        "class_sizes": sizes,
        "total": int(len(keep)),
        "indices_sha256": digest(keep),
    }
    with open(os.path.join(out, "longtail.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write (keep 'fashion' in its name)")
    p.add_argument("--source", default=FASHION_MNIST_DIR, help="folder of the IDX files")
    p.add_argument("--largest", type=int, default=LARGEST, help="images of class 0")
    p.add_argument("--smallest", type=int, default=SMALLEST, help="images of the last class")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    try:
        info = write_longtail(args.out, args.source, args.largest, args.smallest, args.seed)
    except (OSError, ValueError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
