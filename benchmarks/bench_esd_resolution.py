"""How well the Hessian eigenvalue density (metrics.hessian_esd) resolves negative eigenvalues, by
its probes and Lanczos steps (metrics.hessian_esd_probes, hessian_esd_steps), against the exact
spectrum of a small trained and pruned MNIST-1D CNN.

A CNN (width 0.25, about 2,200 parameters) is trained a few epochs on MNIST-1D, pruned to half
its conv weights, and its training-loss Hessian on the kept weights, P H P, is built exactly
(one Hessian-vector product per coordinate) and diagonalised in float64. Two readings of the
negative part, each estimated from the quadrature (nodes and weights) and printed as the mean
and spread over seeds of the random starts: the share of eigenvalues below -1% of the top
eigenvalue (clearly negative: a share of all eigenvalues < 0 is dominated by the near-zero
cluster, whose sign no few-node quadrature resolves), and the negative mass, the mean of
max(-lambda, 0) over all eigenvalues, relative to the top eigenvalue (a smooth function of the
spectrum, which the quadrature converges to). The default (1 probe, the top-eigenvalue run's own
steps) is the first row.

    python benchmarks/bench_esd_resolution.py            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from threeregime.compute.data import DeviceData, prepare_dataset
from threeregime.compute.hessian import HessianOperator, HessianSettings, hessian_summary
from threeregime.compute.models import init_model
from threeregime.compute.prune import apply_masks, compute_masks
from threeregime.compute.train import train
from threeregime.config.settings import DataConfig, ModelConfig, Recipe

SETTINGS = [(1, 0), (1, 10), (1, 30), (1, 80), (4, 30), (16, 30), (4, 80), (16, 80)]


def exact_operator_matrix(op: HessianOperator) -> torch.Tensor:
    """H on the kept weights as a dense matrix (one Hessian-vector product per kept coordinate):
    the operator whose density the quadrature estimates (its random starts are projected onto
    the kept weights, so the pruned coordinates' zero eigenvalues are not part of it)."""
    sizes = [p.numel() for p in op.params]
    kept = torch.cat(
        [(torch.ones_like(p) if m is None else m).flatten() for p, m in zip(op.params, op.masks)]
    )
    columns = []
    for index in torch.nonzero(kept).flatten().tolist():
        flat = torch.zeros(sum(sizes), dtype=op.params[0].dtype)
        flat[index] = 1.0
        vector = [part.view(p.shape) for part, p in zip(flat.split(sizes), op.params)]
        columns.append(torch.cat([t.flatten() for t in op.hvp(vector)]).double()[kept > 0])
    matrix = torch.stack(columns, dim=1)
    return (matrix + matrix.T) / 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="random starts per setting")
    parser.add_argument("--samples", type=int, default=200, help="training samples of the Hessian")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = DeviceData(prepare_dataset(DataConfig(num_samples=1000, generation_seed=3)), "cpu")
    model = init_model(ModelConfig("cnn1d", 0.25), 1, 10, seed=1)
    train(model, data, Recipe(epochs=8, batch_size=32, lr=0.05), (0, 1))
    masks = compute_masks(model, 0.5, "uniform")
    apply_masks(model, masks)
    model.eval()
    x, y = next(data.eval_batches("train", args.samples, args.samples))
    op = HessianOperator(model, x, y, masks)
    eigenvalues = torch.linalg.eigvalsh(exact_operator_matrix(op))
    top = float(eigenvalues.abs().max())

    def readings(values: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
        clearly = float(weights[values < -0.01 * top].sum())
        mass = float((weights * (-values).clamp(min=0)).sum()) / top
        return clearly, mass

    exact = readings(eigenvalues, torch.full_like(eigenvalues, 1 / len(eigenvalues)))
    print(f"exact Hessian on the {len(eigenvalues)} kept weights: top eigenvalue {top:.4g}")
    print()
    print(
        "| probes | steps per probe | Hessian products | share < -1% of top (sd) | negative mass / top (sd) |"
    )
    print("| --- | --- | --- | --- | --- |")
    print(f"| exact | | {len(eigenvalues)} | {exact[0]:.4f} | {exact[1]:.2e} |")
    for probes, steps in SETTINGS:
        found, products = [], 0
        for seed in range(args.seeds):
            settings = HessianSettings(
                100, 1e-3, 1, 1, density=True, seed=seed, density_probes=probes, density_steps=steps
            )
            summary = hessian_summary(model, x, y, masks, settings)
            nodes = torch.tensor(summary["hessian_esd_nodes"], dtype=torch.float64)
            weights = torch.tensor(summary["hessian_esd_weights"], dtype=torch.float64)
            found.append(readings(nodes, weights))
            products = summary["hessian_products"] - 1  # the one Hutchinson probe left out
        share, mass = [f[0] for f in found], [f[1] for f in found]
        label = "top-eigenvalue run" if steps == 0 else str(steps)
        share_text = f"{statistics.fmean(share):.4f} ({statistics.stdev(share):.4f})"
        mass_text = f"{statistics.fmean(mass):.2e} ({statistics.stdev(mass):.1e})"
        print(f"| {probes} | {label} | {products} | {share_text} | {mass_text} |")
    print(f"\n{time.perf_counter() - started:.0f} s, torch {torch.__version__}, {sys.platform}")


if __name__ == "__main__":
    main()
