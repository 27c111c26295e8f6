"""Effect of metrics.lmc_bn_batch_size on LMC: mc with BatchNorm recomputed in batches of
eval_batch_size (the default) and of 64 (the paper's code), on the retrained models of a finished run.

In train mode each batch is normalised with its own statistics, so the recomputed running
statistics of deeper layers depend on the batch size. This script re-measures every retrain pair
of a run both ways (the same function the metrics job calls) and first checks that the default
reproduces the run's own metrics files exactly.

    python benchmarks/bench_lmc_bn_batch.py results/demo            # after `snakemake` (the demo)
    python benchmarks/bench_lmc_bn_batch.py results/demo --bn-batch 64 256
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from common import REPO, machine, table


def pair_mc(payloads: list[dict], data, metrics, bn_batch: int | None) -> float:
    """mc of one retrain pair, as the metrics job computes it, with BN recomputed in ``bn_batch``."""
    from threeregime.compute.checkpoints import model_from
    from threeregime.compute.landscape import linear_mode_connectivity

    states = [{k: v.clone() for k, v in p["model"].items()} for p in payloads]
    out = linear_mode_connectivity(
        model_from(payloads[0]), *states, data, metrics.lmc_points, metrics.lmc_bn_samples,
        metrics.eval_batch_size, bn_batch_size=bn_batch,
    )  # fmt: skip
    return out["mc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="results/<run_name> of a finished run")
    p.add_argument("--config", type=Path, default=REPO / "config.yaml", help="that run's configuration")
    p.add_argument("--bn-batch", type=int, nargs="+", default=[64], help="BN-recompute batch sizes")
    p.add_argument("--eps", type=float, default=0.02, help="Regime I threshold to count crossings")
    p.add_argument("--cells", nargs="+", help="only these cells (e.g. epochs-5/density-0.1/seed1)")
    args = p.parse_args()

    import numpy as np
    import torch

    from threeregime.compute.data import DeviceData
    from threeregime.config.load import load_config
    from threeregime.io.files import load_checkpoint

    torch.set_num_threads(1)
    metrics = load_config(args.config, check_paths=False).metrics
    eval_batch = metrics.eval_batch_size
    data = DeviceData(load_checkpoint(args.results / "data" / "dataset.pt", "dataset"), "cpu")
    rows, diffs = [], {b: [] for b in args.bn_batch}
    crossings = dict.fromkeys(args.bn_batch, 0)
    pairs = sorted((args.results / "metrics").glob("*/density-*/seed*/pair*-*.json"))
    if args.cells:
        pairs = [p for p in pairs if str(p.parent.relative_to(args.results / "metrics")) in args.cells]
    for path in pairs:
        recorded = json.loads(path.read_text())
        a, b = re.fullmatch(r"pair(\d+)-(\d+)\.json", path.name).groups()
        cell = path.parent.relative_to(args.results / "metrics")
        folder = args.results / "retrain" / cell
        payloads = [load_checkpoint(folder / f"retrain{s}" / "model.pt", "retrain") for s in (a, b)]
        default = pair_mc(payloads, data, metrics, None)
        if abs(default - recorded["mc"]) > 1e-12:
            raise SystemExit(f"{path}: default mc {default} != recorded {recorded['mc']}")
        row = [str(cell), f"{a}-{b}", f"{default:+.4f}"]
        for bn_batch in args.bn_batch:
            value = pair_mc(payloads, data, metrics, bn_batch)
            diffs[bn_batch].append(value - default)
            crossings[bn_batch] += (value < -args.eps) != (default < -args.eps)
            row += [f"{value:+.4f}", f"{value - default:+.4f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)

    print(f"\n{machine()}\n")
    header = ["cell", "pair", f"mc (BN batch {eval_batch}, default)"]
    for bn_batch in args.bn_batch:
        header += [f"mc (BN batch {bn_batch})", "difference"]
    print(table(header, rows))
    for bn_batch, values in diffs.items():
        d = np.abs(values)
        print(
            f"\nBN batch {bn_batch} vs {eval_batch}: |mc difference| mean {d.mean():.4f}, max {d.max():.4f} "
            f"over {len(d)} pairs; {crossings[bn_batch]} pair(s) cross mc < -{args.eps}"
        )


if __name__ == "__main__":
    main()
