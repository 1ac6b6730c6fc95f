"""Mean and std over seeds of each head's scores, from the eval.json of several runs.

    python bench/seeds_table.py runs/digits-s0 runs/digits-s1 runs/digits-s2
    python bench/seeds_table.py s0.json s1.json s2.json   # files from evaluate --json

prints one markdown row per head: classes, then NMI / AMI / ARI / ACC as mean +- std (the
population std over the runs given), and each run's ACC of that head. When the runs chose
among heads of equal size (``train.selection_passes``), it adds, per class count, a row for
the selected head of each run (chosen without labels) and one for the best head by ACC (an
oracle that reads the labels: how much the selection leaves on the table).
"""

import json
import sys
from pathlib import Path
from statistics import mean, pstdev

METRICS = ("nmi", "ami", "ari", "acc")


def row(name: str, classes: int, heads: list[dict]) -> str:
    cells = [f"{mean(x[m] for x in heads):.3f} ± {pstdev(x[m] for x in heads):.3f}"
             for m in METRICS]  # fmt: skip
    per_run = ", ".join(f"{x['acc']:.3f}" for x in heads)
    return f"| {name} | {classes} | {' | '.join(cells)} | {per_run} |"


def main(runs: list[str]) -> None:
    files = [Path(r) if r.endswith(".json") else Path(r) / "eval.json" for r in runs]
    results = [json.loads(f.read_text())["heads"] for f in files]
    print("| head | classes | NMI | AMI | ARI | ACC | ACC per run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for h, heads in enumerate(zip(*results, strict=True)):
        print(row(str(h), heads[0]["classes"], list(heads)))
    classes = [x["classes"] for x in results[0]]
    for c in sorted({c for c in classes if classes.count(c) > 1}):
        if all("selected" in x for heads in results for x in heads):
            picked = [next(x for x in heads if x["classes"] == c and x["selected"])
                      for heads in results]  # fmt: skip
            print(row("selected (no labels)", c, picked))
        best = [max((x for x in heads if x["classes"] == c), key=lambda x: x["acc"])
                for heads in results]  # fmt: skip
        print(row("best by ACC (oracle)", c, best))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/seeds_table.py RUN_DIR [RUN_DIR ...]")
    main(sys.argv[1:])
