"""LMC and CKA cost per cell: the project's metrics vs a paper-style implementation.

Two PreResNet-20s (different seeds) on CIFAR-10-shaped data. LMC: ``--points`` evenly spaced
interpolations, at each BatchNorm statistics recomputed over the whole training set (train
mode, no augmentation) and then the training error measured over it. CKA: linear CKA of the
two models' logits and softmax outputs on the first ``--cka-samples`` training images.

* paper-style: torchvision ToTensor + Normalize per image through PIL in a DataLoader (batch
  ``--batch``, ``--workers`` workers), BN reset with ``momentum=None`` (cumulative average),
  ``.item()`` per batch; CKA from n x n Gram matrices in float64 numpy, centred as in the
  usual reference code (HSIC form).
* project: ``threeregime.compute.landscape`` on device-resident tensors (``linear_mode_connectivity``,
  ``model_outputs`` + ``output_similarity``, CKA in feature space: d x d matrices).

A metrics job handles one retrain pair; a cell (temperature, density, dense seed) has three
pairs. Times at the paper's scale (50 000 training images) are extrapolated linearly from
``--train-samples`` and marked as such.

    python benchmarks/bench_metrics.py                         # CPU, a few minutes
    python benchmarks/bench_metrics.py --device cuda --train-samples 50000
"""

from __future__ import annotations

import os

from common import (
    TorchvisionCIFAR,
    paper_transforms,
    parser,
    preresnet20,
    report,
    setup,
    synthetic_cifar,
    table,
    timed,
)

PAPER_TRAIN = 50_000
PAIRS_PER_CELL = 3


def paper_lmc(model, state_a, state_b, loader, points, device):
    import numpy as np
    import torch
    from torch import nn

    errors = []
    for t in np.linspace(0.0, 1.0, points):
        model.load_state_dict(
            {k: (1 - t) * a + t * state_b[k] if a.is_floating_point() else a for k, a in state_a.items()}
        )
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            for x, _ in loader:
                model(x.to(device))
        model.eval()
        wrong, seen = 0, 0
        with torch.no_grad():
            for x, y in loader:
                out = model(x.to(device))
                wrong += (out.argmax(1) != y.to(device)).sum().item()
                seen += len(y)
        errors.append(wrong / seen)
    middle = (errors[0] + errors[-1]) / 2
    u = int(np.argmax([abs(middle - e) for e in errors]))
    return middle - errors[u]


def paper_outputs(model, loader, device):
    import torch

    model.eval()
    chunks = []
    with torch.no_grad():
        for x, _ in loader:
            chunks.append(model(x.to(device)).cpu())
    return torch.cat(chunks).double().numpy()


def gram_cka(x, y) -> float:
    """Linear CKA from n x n Gram matrices (HSIC form) in float64 numpy."""
    import numpy as np

    def centred(gram):
        means = gram.mean(0)
        means -= means.mean() / 2
        return gram - means[:, None] - means[None, :]

    gx, gy = centred(x @ x.T), centred(y @ y.T)
    return float((gx * gy).sum() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def softmax(a):
    import numpy as np

    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--train-samples", type=int, default=1000, help="training set size for LMC")
    p.add_argument("--cka-samples", type=int, default=6464)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--batch", type=int, default=1000, help="evaluation batch (project default 1000)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.set_defaults(threads=1, repeats=1)
    args = p.parse_args()
    setup(args)
    import torch

    from threeregime.compute.data import DeviceData
    from threeregime.compute.landscape import linear_mode_connectivity, model_outputs, output_similarity
    from threeregime.compute.runtime import Performance

    device = torch.device(args.device)
    size = max(args.train_samples, args.cka_samples)
    payload = synthetic_cifar(size, 0, seed=3, learnable=True) | {"augment": False}
    lmc_payload = payload | {k: payload[k][: args.train_samples] for k in ("train_x", "train_y")}
    model_a, model_b = preresnet20(device, seed=1), preresnet20(device, seed=2)
    state_a = {k: v.clone() for k, v in model_a.state_dict().items()}
    state_b = {k: v.clone() for k, v in model_b.state_dict().items()}

    def loader(n):
        dataset = TorchvisionCIFAR(payload["train_x"][:n], payload["train_y"][:n], paper_transforms(False))
        return torch.utils.data.DataLoader(
            dataset, batch_size=args.batch, shuffle=False, num_workers=args.workers,
            pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
        )  # fmt: skip

    lmc_loader, cka_loader = loader(args.train_samples), loader(args.cka_samples)
    work = preresnet20(device, seed=0)

    def paper_pair():
        lmc_s, mc = timed(lambda: paper_lmc(work, state_a, state_b, lmc_loader, args.points, device), device)

        def cka():
            a = paper_outputs(model_a, cka_loader, device)
            b = paper_outputs(model_b, cka_loader, device)
            return gram_cka(softmax(a), softmax(b)), gram_cka(a, b)

        cka_s, (cka_softmax, cka_logits) = timed(cka, device)
        return lmc_s, cka_s, mc, cka_softmax

    def project_pair(perf):
        lmc_data = DeviceData(lmc_payload, device, perf.channels_last)
        cka_data = DeviceData(payload, device, perf.channels_last)
        fmt = torch.channels_last if perf.channels_last else torch.contiguous_format
        for m in (work, model_a, model_b):  # Module.to works in place
            m.to(memory_format=fmt)

        def lmc():
            return linear_mode_connectivity(
                work, state_a, state_b, lmc_data, args.points, 0, args.batch, perf
            )["mc"]

        def cka():
            batches = lambda: cka_data.eval_batches("train", args.batch, args.cka_samples)  # noqa: E731
            a, b = model_outputs(model_a, batches(), perf), model_outputs(model_b, batches(), perf)
            return output_similarity(a, b)["cka_softmax"]

        lmc_s, mc = timed(lmc, device)
        cka_s, cka_softmax = timed(cka, device)
        for m in (work, model_a, model_b):
            m.to(memory_format=torch.contiguous_format)
        return lmc_s, cka_s, mc, cka_softmax

    contenders = {
        "paper-style (DataLoader, Gram CKA)": paper_pair,
        "project, reference (fp32)": lambda: project_pair(Performance()),
        "project, channels_last": lambda: project_pair(Performance(channels_last=True)),
        "project, bf16 + channels_last": lambda: project_pair(Performance(amp="bf16", channels_last=True)),
    }
    results = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            results[name].append(run())
    scale = PAPER_TRAIN / args.train_samples
    base = None
    rows = []
    for name, runs in results.items():
        lmc_s = min(r[0] for r in runs)
        cka_s = min(r[1] for r in runs)
        _, _, mc, cka = runs[-1]
        cell_paper = PAIRS_PER_CELL * (lmc_s * scale + cka_s)
        base = base or cell_paper
        rows.append([name, lmc_s, cka_s, mc, cka, cell_paper, base / cell_paper])
    headers = [
        "implementation",
        f"LMC s ({args.train_samples} imgs, {args.points} pts)",
        f"CKA s ({args.cka_samples} imgs)",
        "mc",
        "CKA softmax",
        "per cell at 50k imgs, s (extrapolated)",
        "speed-up",
    ]
    body = table(headers, rows)
    body += (
        f"\n\nBatch {args.batch}; paper-style DataLoader workers {args.workers}; best of {args.repeats}. "
        "Models: two PreResNet-20 initialisations (timing does not depend on the weights). "
        f"Per cell = {PAIRS_PER_CELL} pairs x (LMC x {scale:g} + CKA); the Hessian and the per-model "
        "errors of a metrics job are not included (see bench_hessian.py)."
    )
    report("LMC and CKA cost", args, body)


if __name__ == "__main__":
    main()
