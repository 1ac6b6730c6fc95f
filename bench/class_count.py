"""Does a label-free score pick the true number of classes among a run's heads?

    python bench/class_count.py runs/cc-digits-s0 runs/cc-digits-s1 runs/cc-digits-s2 --true 10
    python bench/class_count.py runs/cc-fmnist-s* --true 10 --features backbone --format json

For each run folder (one ``selfclassifier train --out RUN``, heads of different sizes such as
[5, 10, 20, 40]) it reads each head's ``silhouette``, ``size_entropy`` and ``active_classes``
from ``RUN/eval.json``, or computes them from ``RUN/checkpoint.pt`` on the training data when
eval.json lacks them (or ``--features backbone`` asks for the silhouette on backbone features
rather than on the embeddings). The score's pick is the head with the highest silhouette;
it is right when that head has ``--true`` classes. Printed: one Markdown row per run (each
head's silhouette, the pick, and the NMI / ACC of the picked head and of the true-size head),
then how often the pick was right; ``--format json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCORE = "silhouette"


def scores_from_eval_json(run: Path) -> list[dict] | None:
    path = run / "eval.json"
    if not path.is_file():
        return None
    heads = json.loads(path.read_text())["heads"]
    return heads if heads and all(SCORE in h for h in heads) else None


def scores_from_checkpoint(run: Path, features: str, device: str) -> list[dict]:
    """Every head's scores on the run's training data, the silhouette on ``features``."""
    from selfclassifier.evaluate.metrics import silhouettes
    from selfclassifier.evaluate.probes import data_spec, open_data
    from selfclassifier.evaluate.scores import head_scores
    from selfclassifier.inference import load_run

    loaded = load_run(run / "checkpoint.pt", device)
    spec, split = data_spec(loaded.cfg, None, None)
    out = loaded.extract(open_data(spec, split, loaded.mode, recorded=True), batch_size=512)
    heads = head_scores(out)
    if features == "backbone":
        preds = [p.argmax(1).numpy() for p in out.probs]
        for head, value in zip(heads, silhouettes(out.features, preds), strict=True):
            head[SCORE] = value
    return loaded.mark_selection(heads)


def pick(heads: list[dict]) -> int | None:
    """The head with the highest score (the first on a tie); None when no head has one."""
    scored = [(h[SCORE], -i) for i, h in enumerate(heads) if h.get(SCORE) is not None]
    return -max(scored)[1] if scored else None


def run_row(run: Path, heads: list[dict], true: int) -> dict:
    chosen = pick(heads)
    truth = next((i for i, h in enumerate(heads) if h["classes"] == true), None)

    def scores(i):
        return None if i is None else {k: heads[i].get(k) for k in ("nmi", "acc")}

    return {
        "run": str(run),
        "heads": [
            {k: h.get(k) for k in ("classes", "active_classes", "size_entropy", SCORE)}
            for h in heads
        ],
        "picked_head": chosen,
        "picked_classes": None if chosen is None else heads[chosen]["classes"],
        "true_classes": true,
        "correct": chosen is not None and heads[chosen]["classes"] == true,
        "picked_scores": scores(chosen),
        "true_size_scores": scores(truth),
    }


def _num(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(rows: list[dict], features: str) -> str:
    sizes = [h["classes"] for h in rows[0]["heads"]]
    head_cols = " | ".join(f"{SCORE} {c}" for c in sizes)
    lines = [
        f"| run | {head_cols} | picked | true | NMI / ACC picked | NMI / ACC true size |",
        "| --- " * (len(sizes) + 5) + "|",
    ]
    for r in rows:
        cells = " | ".join(_num(h[SCORE]) for h in r["heads"])
        picked, true = r["picked_scores"] or {}, r["true_size_scores"] or {}
        lines.append(
            f"| {r['run']} | {cells} | {r['picked_classes']} {'✓' if r['correct'] else '✗'} "
            f"| {r['true_classes']} | {_num(picked.get('nmi'))} / {_num(picked.get('acc'))} "
            f"| {_num(true.get('nmi'))} / {_num(true.get('acc'))} |"
        )
    right = sum(r["correct"] for r in rows)
    lines.append("")
    lines.append(
        f"highest {SCORE} ({features}) picked the true count ({rows[0]['true_classes']}) in "
        f"{right} of {len(rows)} runs"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--true", type=int, required=True, help="the data's real number of classes")
    p.add_argument("--features", choices=["embedding", "backbone"], default="embedding")
    p.add_argument("--format", choices=["markdown", "json"], default="markdown")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        heads = scores_from_eval_json(run) if args.features == "embedding" else None
        if heads is None:
            heads = scores_from_checkpoint(run, args.features, args.device)
        rows.append(run_row(run, heads, args.true))
    if args.format == "json":
        right = sum(r["correct"] for r in rows)
        summary = {"score": SCORE, "features": args.features, "correct": right, "runs": len(rows)}
        print(json.dumps({"summary": summary, "runs": rows}, indent=2))
    else:
        print(markdown(rows, args.features))
    return 0


if __name__ == "__main__":
    sys.exit(main())
