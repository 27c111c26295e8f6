"""Does the CPU language-model setting order Wanda's sparsity patterns as Wanda's README does?

Wanda's README (locuslab/wanda, LLaMA-2-7B, WikiText-2 perplexity, one-shot pruning with no
retraining): dense 5.12; unstructured 50% 6.42 < 4:8 7.97 < 2:4 11.02 (magnitude: 14.89 < 16.48
< 54.59). This script takes the dense models of a run of ``presets/overlays/lm-cpu.yaml`` (every
checkpoint of its tokens knob), prunes each one-shot to density 0.5 in the three patterns with
Wanda and with magnitude (``uniform``), and reports the validation perplexity of each, with no
retraining, as the README's numbers are. Calibration: the run's first ``--calibration``
training windows (Wanda's default: 128 sequences).

    python benchmarks/bench_lm_wanda.py results/lm-cpu [--calibration 128]

Prints a Markdown table (one row per dense checkpoint) and whether each row keeps the README's
ordering.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from common import machine, table

from threeregime.compute.checkpoints import load, load_dataset, model_from
from threeregime.compute.evaluate import evaluate
from threeregime.compute.prune import apply_masks, compute_masks

PATTERNS = ["unstructured", "4:8", "2:4"]
README = {"wanda": (6.42, 7.97, 11.02), "uniform": (14.89, 16.48, 54.59)}


def perplexity(model, data) -> float:
    loss, _ = evaluate(model, data.eval_batches("test", 500))
    return math.exp(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a run folder of presets/overlays/lm-cpu.yaml")
    parser.add_argument("--calibration", type=int, default=128, help="training windows Wanda calibrates on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(str(args.results / "data" / "dataset.pt"), "cpu", False)
    inputs, _ = next(data.eval_batches("train", args.calibration, args.calibration))
    print(machine())
    tokens = data.test_y.numel()
    print(f"{len(inputs)} calibration windows of {inputs.shape[1]} tokens; validation {tokens} tokens")
    rows = []
    dense_files = (args.results / "dense").glob("*/seed*/model.pt")
    for path in sorted(dense_files, key=lambda p: (float(p.parent.parent.name.split("-")[1]), p.parent.name)):
        dense = model_from(load(path, "dense"), source=str(path))
        row = {
            "dense model": f"{path.parent.parent.name} {path.parent.name}",
            "dense": perplexity(dense, data),
        }
        ordered = []
        for method in ("wanda", "uniform"):
            values = []
            for pattern in PATTERNS:
                pruned = copy.deepcopy(dense)
                masks = compute_masks(pruned, 0.5, method, {"calibration_samples": args.calibration}, pattern,
                                      1, inputs)  # fmt: skip
                apply_masks(pruned, masks)
                values.append(perplexity(pruned, data))
                row[f"{method} {pattern}"] = values[-1]
            ordered.append("yes" if values[0] < values[1] < values[2] else "no")
        row["wanda ordered"], row["magnitude ordered"] = ordered
        rows.append(row)
    columns = ["dense model", "dense", *(f"{m} {p}" for m in ("wanda", "uniform") for p in PATTERNS)]
    columns += ["wanda ordered", "magnitude ordered"]
    print(table(columns, [[row[c] for c in columns] for row in rows]))
    print("README (LLaMA-2-7B): wanda " + " / ".join(map(str, README["wanda"])) + "; magnitude "
          + " / ".join(map(str, README["uniform"])))  # fmt: skip


if __name__ == "__main__":
    main()
