"""Batched photometric stage on one 224 px view batch: ours vs kornia (CPU, 1 thread).

kornia is not a dependency: pip install --no-deps --target /tmp/k kornia==0.9.0 kornia-rs
then KORNIA_PATH=/tmp/k PYTHONPATH=$PWD python bench/kornia_compare.py
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.environ.get("KORNIA_PATH", ""))
import kornia.augmentation as K  # noqa: E402

from selfclassifier.config import load_config  # noqa: E402
from selfclassifier.views import BatchedPhotometric  # noqa: E402

torch.set_num_threads(1)
cfg = load_config("imagenet").augment
B = 32
x8 = torch.randint(0, 256, (B, 3, 224, 224), dtype=torch.uint8)
k = torch.nn.Sequential(
    K.RandomHorizontalFlip(p=0.5),
    K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
    K.RandomGrayscale(p=0.2),
    K.RandomGaussianBlur((13, 13), (0.1, 2.0), p=1.0),
    K.Normalize(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])),
)
ours32 = BatchedPhotometric(cfg, 3, torch.float32)
oursbf = BatchedPhotometric(cfg, 3, torch.bfloat16)


def view0(stage):  # the first global view only (blur p=1), like the kornia pipeline above
    stage.specs = stage.specs[:1]
    return lambda: stage([x8], torch.Generator().manual_seed(0))


fns = {
    "kornia_fp32": lambda: k(x8.float() / 255),
    "ours_fp32": view0(ours32),
    "ours_bf16": view0(oursbf),
}
res = {}
for _ in range(3):
    for name, f in fns.items():
        t = time.perf_counter()
        f()
        dt = (time.perf_counter() - t) / B * 1e3
        res[name] = min(res.get(name, 1e9), dt)
print(
    json.dumps({n: round(v, 2) for n, v in res.items()}, indent=1), "ms per 224px view, best of 3"
)
