"""Hessian top eigenvalue and trace: PyHessian 0.1 vs the project's path, time and accuracy.

PreResNet-20 in eval mode on one batch of ``--samples`` CIFAR-10-shaped images, after
``--train-steps`` SGD steps on learnable synthetic data (class template + noise), or a real
checkpoint (``--checkpoint``, a retrain model.pt of the workflow). Every contender computes
the top eigenvalue with the same relative tolerance ``--tol`` (at most ``--max-iter``
products) and the trace with exactly ``--probes`` Rademacher probes (PyHessian's
``trace(maxIter=probes, tol=-inf)``; with tol=0 its loop still stops early whenever the
running mean is negative). Rows with a plain trace use PyHessian's estimator; the project's
default deflates it by ``--deflation`` Lanczos vectors (same expectation, lower variance).

Accuracy: the eigenvalue against a long Lanczos run (``--ref-iter`` products, tol 0); the trace
as mean +- standard error and as a z-score against a reference (a deflated run with
``--ref-iter`` vectors and ``--ref-probes`` probes). "At equal accuracy" gives each row the
probes that reach PyHessian's expected standard error: the same count for a plain trace (the
same estimator), and probes x (its sd per probe / plain sd per probe)^2, at least 2, for a
deflated one, where the plain sd pools PyHessian's probes, the project's and ``--plain-probes``
more; a deflated row's time at equal accuracy is a timed rerun with that many probes.

    python benchmarks/bench_hessian.py                       # CPU, about 9 minutes
    python benchmarks/bench_hessian.py --device cuda --samples 200 --probes 100 --repeats 3
"""

from __future__ import annotations

import copy
import functools
import math
import sys

from common import parser, report, setup, synthetic_cifar, table, timed, trained_preresnet20

PYHESSIAN = "PyHessian 0.1 (power, probes one by one)"
PLAIN = "project, Lanczos, BN folded, plain trace"


def build_problem(args):
    """(model in eval mode, x, y). A checkpoint's masks are not used: PyHessian cannot apply
    them, so every row measures the dense Hessian of the checkpoint's weights."""
    import torch

    from threeregime.compute.data import DeviceData

    device = torch.device(args.device)
    data = DeviceData(synthetic_cifar(max(64 * args.train_steps, args.samples), 64, 2, True), device)
    if args.checkpoint:
        from threeregime.compute.checkpoints import model_from
        from threeregime.io.files import load_checkpoint

        model = model_from(load_checkpoint(args.checkpoint, "retrain"), device)
    else:
        model = trained_preresnet20(device, data, args.train_steps, seed=2)
    x, y = next(data.eval_batches("train", args.samples, args.samples))
    return model.eval(), x, y


def pyhessian_run(model, x, y, args):
    """PyHessian 0.1 as the paper's code calls it; returns a result dict."""
    import torch
    from pyhessian import hessian as PyHessian
    from torch import nn

    module = sys.modules[PyHessian.__module__]  # count its Hessian-vector products
    plain, products = module.hessian_vector_product, [0]

    def counting(*a, **k):
        products[0] += 1
        return plain(*a, **k)

    torch.manual_seed(0)
    module.hessian_vector_product = counting
    try:
        build_s, engine = timed(
            lambda: PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda), args.device
        )
        eig_s, (eigenvalues, _) = timed(
            lambda: engine.eigenvalues(maxIter=args.max_iter, tol=args.tol, top_n=1), args.device
        )
        eig_products = products[0]
        trace_s, samples = timed(lambda: engine.trace(maxIter=args.probes, tol=-math.inf), args.device)
    finally:
        module.hessian_vector_product = plain
    for p in model.parameters():  # PyHessian leaves graph-carrying .grad behind
        p.grad = None
    n = len(samples)
    mean = sum(samples) / n
    stderr = math.sqrt(sum((t - mean) ** 2 for t in samples) / (n - 1) / n) if n > 1 else float("nan")
    return {
        "eig": float(eigenvalues[0]), "eig_hvps": eig_products, "probes": n, "trace": mean,
        "stderr": stderr, "build_s": build_s, "eig_s": eig_s, "trace_s": trace_s, "deflation": 0,
    }  # fmt: skip


def project_run(model, x, y, args, eig_method, deflation=0, probes=None, **op_kwargs):
    from threeregime.compute.hessian import HessianOperator, lanczos, top_eigenvalue, trace

    probes = probes or args.probes
    build_s, op = timed(lambda: HessianOperator(model, x, y, **op_kwargs), args.device)
    if eig_method == "lanczos":
        eig_s, (eig, hvps, basis) = timed(
            lambda: lanczos(op, args.max_iter, args.tol, 0, min_products=deflation), args.device
        )
    else:
        eig_s, (eig, hvps) = timed(lambda: top_eigenvalue(op, args.max_iter, args.tol, 0), args.device)
    basis = basis if deflation else None
    trace_s, (value, stderr) = timed(lambda: trace(op, probes, args.probe_batch, 1, basis), args.device)
    return {
        "eig": eig, "eig_hvps": hvps, "probes": probes, "trace": value, "stderr": stderr,
        "build_s": build_s, "eig_s": eig_s, "trace_s": trace_s, "deflation": deflation,
    }  # fmt: skip


def _sd(result: dict) -> float:
    """Standard deviation of one probe's estimate."""
    return result["stderr"] * math.sqrt(result["probes"])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64, help="batch size of the Hessian (paper: 200)")
    p.add_argument("--train-steps", type=int, default=100, help="SGD steps before measuring")
    p.add_argument("--tol", type=float, default=1e-3, help="eigenvalue relative tolerance (paper: 1e-3)")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--probes", type=int, default=100, help="Hutchinson probes (PyHessian default: 100)")
    p.add_argument("--probe-batch", type=int, default=10)
    p.add_argument("--deflation", type=int, default=10, help="Lanczos vectors deflating the trace")
    p.add_argument("--ref-iter", type=int, default=40, help="Lanczos products of the references")
    p.add_argument("--ref-probes", type=int, default=100, help="probes of the reference trace")
    p.add_argument("--plain-probes", type=int, default=200, help="extra plain probes for the pooled sd")
    p.add_argument("--checkpoint", help="a retrain model.pt of the workflow instead of a trained net")
    p.add_argument("--no-variants", action="store_true", help="skip the vmap and torch.func rows")
    p.set_defaults(threads=1, repeats=1)
    args = p.parse_args()
    setup(args)
    import torch

    model, x, y = build_problem(args)
    if args.checkpoint:
        print("note: PyHessian ignores masks; every row uses the dense Hessian of the checkpoint")
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    k = args.deflation
    contenders = {  # name -> run(probes); None = --probes
        PYHESSIAN: lambda n=None: pyhessian_run(model, x, y, args),
        "project, same algorithm (power, no BN folding, plain trace)": lambda n=None: project_run(
            model, x, y, args, "power", probes=n, batched=False, fold_bn=False
        ),
        PLAIN: lambda n=None: project_run(model, x, y, args, "lanczos", probes=n),
        f"project default (Lanczos, BN folded, trace deflated by {k})": lambda n=None: project_run(
            model, x, y, args, "lanczos", k, probes=n
        ),
        "project default + channels_last": lambda n=None: project_run(
            model_cl, x_cl, y, args, "lanczos", k, probes=n
        ),
    }
    dynamo_s = None
    if not args.no_variants:
        contenders["project default, probes batched (is_grads_batched)"] = lambda n=None: project_run(
            model, x, y, args, "lanczos", k, probes=n, batched=True
        )
        contenders["project default, torch.func fwd-over-rev, probes batched"] = lambda n=None: project_run(
            model, x, y, args, "lanczos", k, probes=n, mode="forward", batched=True
        )
        if "torch._dynamo" not in sys.modules:
            dynamo_s, _ = timed(lambda: __import__("torch._dynamo"))

    from threeregime.compute.hessian import HessianOperator, lanczos, trace

    reference_op = HessianOperator(model, x, y)
    ref_s, (ref_eig, _, ref_basis) = timed(
        lambda: lanczos(reference_op, args.ref_iter, 0.0, 7, min_products=args.ref_iter)
    )
    ref_trace = trace(reference_op, args.ref_probes, args.probe_batch, 12345, ref_basis)
    extra = trace(reference_op, args.plain_probes, args.probe_batch, 54321) if args.plain_probes else None

    runs = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved
        for name, run in contenders.items():
            seconds, out = timed(run, args.device)
            runs[name].append(out | {"total_s": seconds})
    rows = []
    best = {name: min(results, key=lambda r: r["total_s"]) for name, results in runs.items()}
    pyh = best[PYHESSIAN]
    # plain Hutchinson's sd per probe, pooled over independent probe sets (one sd from 100
    # probes is too noisy to rescale probe counts by: two such sets here differed 1.5x)
    pooled = [(pyh["probes"], _sd(pyh)), (best[PLAIN]["probes"], _sd(best[PLAIN]))]
    if extra is not None:
        pooled.append((args.plain_probes, extra[1] * math.sqrt(args.plain_probes)))
    plain_sd = math.sqrt(sum((n - 1) * sd**2 for n, sd in pooled) / sum(n - 1 for n, _ in pooled))
    plain_n = sum(n for n, _ in pooled)
    for name, r in best.items():
        per_hvp = (r["eig_s"] + r["trace_s"]) / (r["eig_hvps"] + r["probes"])
        equal_probes, equal_s = r["probes"], r["total_s"]  # a plain trace: PyHessian's estimator
        if r["deflation"]:  # rerun with the probes that give PyHessian's expected stderr, timed
            equal_probes = max(2, math.ceil(pyh["probes"] * (_sd(r) / plain_sd) ** 2))
            equal_s, _ = timed(functools.partial(contenders[name], equal_probes), args.device)
        row = [name, r["eig"], abs(r["eig"] - ref_eig) / abs(ref_eig), r["eig_hvps"], r["probes"]]
        row += [f"{r['trace']:.5g} +- {r['stderr']:.2g}", _sd(r)]
        row.append((r["trace"] - ref_trace[0]) / math.hypot(r["stderr"], ref_trace[1]))
        row += [per_hvp, r["total_s"], pyh["total_s"] / r["total_s"]]
        row += [equal_probes, equal_s, pyh["total_s"] / equal_s]
        rows.append(row)
    headers = ["method", "top eig", "rel. err", "HVPs (eig)", "probes", "trace +- stderr", "sd / probe"]
    headers += ["z vs ref", "s / HVP", "total s", "speed-up"]
    headers += ["probes for PyHessian's stderr", "s at equal accuracy", "speed-up at equal accuracy"]
    body = table(headers, rows)
    body += (
        f"\n\nPreResNet-20 after {args.train_steps} SGD steps on learnable synthetic CIFAR-shaped data"
        f"{' (checkpoint ' + args.checkpoint + ')' if args.checkpoint else ''}, Hessian of one batch "
        f"of {args.samples} samples, eval mode; eigenvalue tol {args.tol}; probe batch "
        f"{args.probe_batch}; best of {args.repeats}; total includes building the gradient graph. "
        f"Reference top eigenvalue {ref_eig:.6g} (Lanczos, {args.ref_iter} products, tol 0); "
        f"reference trace {ref_trace[0]:.6g} +- {ref_trace[1]:.2g} ({args.ref_iter} Lanczos vectors "
        f"+ {args.ref_probes} probes; {ref_s:.1f} s for its basis). Plain-trace sd per probe, "
        f"pooled over {plain_n} probes: {plain_sd:.4g}; the deflated rows' equal-accuracy time is "
        "a timed rerun with that probe count."
    )
    if dynamo_s is not None:
        body += f" The first torch.func use imports torch._dynamo: {dynamo_s:.2f} s, not in the table."
    report("Hessian top eigenvalue and trace", args, body)


if __name__ == "__main__":
    main()
