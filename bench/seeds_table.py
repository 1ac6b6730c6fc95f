"""Mean and std over seeds of each head's scores, from the eval.json of several runs.

    python bench/seeds_table.py runs/digits-s0 runs/digits-s1 runs/digits-s2

prints one markdown row per head: classes, then NMI / AMI / ARI / ACC as mean +- std (the
population std over the runs given), and each run's ACC of that head.
"""

import json
import sys
from pathlib import Path
from statistics import mean, pstdev

METRICS = ("nmi", "ami", "ari", "acc")


def main(runs: list[str]) -> None:
    results = [json.loads((Path(r) / "eval.json").read_text())["heads"] for r in runs]
    print("| head | classes | NMI | AMI | ARI | ACC | ACC per run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for h, heads in enumerate(zip(*results, strict=True)):
        cells = [f"{mean(x[m] for x in heads):.3f} ± {pstdev(x[m] for x in heads):.3f}"
                 for m in METRICS]  # fmt: skip
        per_run = ", ".join(f"{x['acc']:.3f}" for x in heads)
        print(f"| {h} | {heads[0]['classes']} | {' | '.join(cells)} | {per_run} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/seeds_table.py RUN_DIR [RUN_DIR ...]")
    main(sys.argv[1:])
