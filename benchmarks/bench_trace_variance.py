"""How much deflation cuts the Hessian trace's variance on the workflow's own models.

For each retrained checkpoint (a ``model.pt`` of ``results/<run>/retrain``, its masks applied)
and the first ``--samples`` training samples of the run's prepared dataset, the sd per probe of
plain Hutchinson (PyHessian's estimator) and of the trace deflated by each ``--deflation``
count of Lanczos vectors, from the same ``--probes`` Rademacher probes. The variance cut
(plain sd / deflated sd)^2 is the factor by which deflation divides the probes needed for a
given standard error.

    snakemake                                               # makes results/demo first
    python benchmarks/bench_trace_variance.py               # about a minute on CPU
"""

from __future__ import annotations

import glob
import statistics

from common import REPO, parser, report, setup, table


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default=str(REPO / "results/demo/retrain/*/*/seed1/retrain1/model.pt"))
    p.add_argument("--data", default=str(REPO / "results/demo/data/dataset.pt"))
    p.add_argument("--samples", type=int, default=200, help="Hessian batch (the workflow's default)")
    p.add_argument("--probes", type=int, default=100)
    p.add_argument("--deflation", type=int, nargs="+", default=[5, 10, 20])
    p.set_defaults(threads=1)
    args = p.parse_args()
    setup(args)
    import torch

    from threeregime.compute.checkpoints import model_from
    from threeregime.compute.data import DeviceData
    from threeregime.compute.hessian import HessianOperator, lanczos, trace
    from threeregime.io.files import load_checkpoint

    paths = sorted(glob.glob(args.checkpoints))
    if not paths:
        raise SystemExit(f"no checkpoint matches {args.checkpoints}; run snakemake first")
    device = torch.device(args.device)
    data = DeviceData(load_checkpoint(args.data, "dataset"), device)
    x, y = next(data.eval_batches("train", args.samples, args.samples))
    rows, cuts = [], {k: [] for k in args.deflation}
    for path in paths:
        payload = load_checkpoint(path, "retrain")
        masks = {name: m.to(device) for name, m in payload["masks"].items()}
        op = HessianOperator(model_from(payload, device), x, y, masks)
        plain, plain_se = trace(op, args.probes, 10, seed=1)
        plain_sd = plain_se * args.probes**0.5
        row = [path.split("retrain/")[-1].rsplit("/", 1)[0], f"{plain:.4g} +- {plain_se:.2g}", plain_sd]
        for k in args.deflation:
            _, _, basis = lanczos(op, max(k, 100), 1e-3, seed=0, min_products=k)
            value, se = trace(op, args.probes, 10, seed=1, basis=basis)
            cut = (plain_se / se) ** 2
            cuts[k].append(cut)
            row += [f"{value:.4g} +- {se:.2g}", cut]
        rows.append(row)
    summary = ["min / median / max", "", ""]
    for k in args.deflation:
        summary += ["", f"{min(cuts[k]):.3g} / {statistics.median(cuts[k]):.3g} / {max(cuts[k]):.3g}"]
    rows.append(summary)
    headers = ["checkpoint", "plain trace +- stderr", "plain sd / probe"]
    for k in args.deflation:
        headers += [f"deflated by {k}", f"variance cut (k={k})"]
    body = table(headers, rows)
    body += (
        f"\n\n{len(paths)} checkpoints ({args.checkpoints}); Hessian of the first {args.samples} "
        f"training samples of {args.data}, masks applied; {args.probes} Rademacher probes, the same "
        "for every column; Lanczos from the workflow's seed, run to tol 1e-3 and at least k products."
    )
    report("Trace variance: plain vs deflated Hutchinson on workflow checkpoints", args, body)


if __name__ == "__main__":
    main()
