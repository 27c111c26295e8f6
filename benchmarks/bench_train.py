"""Training throughput: the project's trainer vs a paper-style loop, dense and masked retraining.

PreResNet-20 on CIFAR-10-shaped data (uint8 noise images, 10 classes), batch 64, SGD momentum
0.9, lr 0.1, weight decay 1e-4, RandomCrop(32, padding=4) + horizontal flip.

* paper-style loop: torchvision transforms applied per image through PIL in a DataLoader
  (shuffle, ``--workers`` worker processes, pinned memory on a GPU), fp32, torch.optim.SGD,
  loss and accuracy read back with ``.item()`` every step (AverageMeter style), masks
  re-applied after each step by a Python loop over the conv modules.
* project trainer: ``threeregime.compute.train.train`` with the data on the device (batched crop and
  flip there), its foreach SGD and foreach mask multiply, under each Performance setting.
* packed (``--pack R ...``): ``threeregime.compute.train.train_runs`` with R runs in one model (grouped
  layers, threeregime.compute.pack), each with its own data stream, as a packed retrain job trains them;
  images/s counts all R runs' images.

Images/s are steady state: every contender runs one warm-up pass first, then ``--steps`` steps per
timed pass, passes interleaved ``--repeats`` times; the best and worst pass are reported. The
paper-style pass starts its clock after the first batch (worker start-up is a per-epoch cost);
the project's pass includes its per-epoch test evaluation (64 images here).

    python benchmarks/bench_train.py                  # CPU, a few minutes on 2 cores
    python benchmarks/bench_train.py --device cuda --steps 200 --compile --pack 3 9 27

The project's rows set the TF32 flags as a job does (off unless the row says TF32); the
paper-style loop keeps PyTorch's defaults (TF32 convolutions on an Ampere or newer GPU). With
``--compile`` the trainer compiles the step, on a GPU with CUDA graphs ("reduce-overhead").
"""

from __future__ import annotations

import os
import time

from common import parser, preresnet20, report, setup, synchronize, synthetic_cifar, table, timed

BATCH = 64


def paper_style_pass(args, masked: bool):
    """A closure running ``steps`` paper-style steps (one DataLoader epoch) per call."""
    import torch
    import torch.nn.functional as F
    from common import TorchvisionCIFAR, paper_transforms

    from threeregime.compute.prune import compute_masks

    device = torch.device(args.device)
    payload = synthetic_cifar((args.steps + 1) * BATCH, 0, seed=1)
    dataset = TorchvisionCIFAR(payload["train_x"], payload["train_y"], paper_transforms(augment=True))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    model = preresnet20(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    conv_masks = []
    if masked:
        masks = compute_masks(model, args.density, "uniform")
        modules = dict(model.named_modules())
        conv_masks = [(modules[name.rsplit(".", 1)[0]], m.float()) for name, m in masks.items()]
        for module, mask in conv_masks:
            module.weight.data.mul_(mask)

    def run():
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # defaults
        model.train()
        batches = iter(loader)
        x, y = next(batches)  # worker start-up is a per-epoch cost, not a per-step one
        losses, correct, seen = 0.0, 0, 0
        start = None
        for x, y in batches:
            if start is None:
                synchronize(device)
                start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for module, mask in conv_masks:
                module.weight.data.mul_(mask)
            losses += loss.item() * len(y)
            correct += out.argmax(1).eq(y).sum().item()
            seen += len(y)
        synchronize(device)
        return seen / (time.perf_counter() - start)

    return run


def project_pass(args, masked: bool, perf, runs: int = 1):
    """A closure running one epoch of ``args.steps`` steps of the project's trainer per call,
    ``runs`` packed runs at a time (one: the plain trainer)."""
    import torch

    from threeregime.compute.data import DeviceData
    from threeregime.compute.pack import Packed
    from threeregime.compute.prune import compute_masks
    from threeregime.compute.runtime import set_tf32
    from threeregime.compute.train import RunSet, train_runs
    from threeregime.config.settings import Recipe

    device = torch.device(args.device)
    data = DeviceData(synthetic_cifar(args.steps * BATCH, BATCH, seed=1), device, perf.channels_last)
    model = preresnet20(device)
    if perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
    masks = compute_masks(model, args.density, "uniform") if masked else None
    recipe = Recipe(epochs=1, batch_size=BATCH, lr=0.1, momentum=0.9, weight_decay=1e-4)
    # one module for every pass, as one model is for one run: compiled once, in the warm-up
    packed = Packed([model] * runs, torch.channels_last if perf.channels_last else None)
    calls = [0]

    def run():
        calls[0] += 1
        set_tf32(perf.tf32)  # as a workflow job does
        streams = [(1, calls[0], r) for r in range(runs)]
        seconds, _ = timed(
            lambda: train_runs(RunSet(packed, streams, [masks] * runs), data, recipe, perf=perf), device
        )
        return runs * args.steps * BATCH / seconds

    return run


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="steps per timed pass (default 30)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--density", type=float, default=0.1, help="mask density for retraining")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    p.add_argument("--pack", type=int, nargs="*", default=[], help="also time R packed runs per step")
    p.add_argument("--only-pack", action="store_true", help="time only the paper-style loop and --pack rows")
    p.add_argument("--kinds", nargs="+", choices=["dense", "masked"], default=["dense", "masked"])
    args = p.parse_args()
    setup(args)
    from threeregime.compute.runtime import Performance

    settings = {
        "project, reference (fp32)": Performance(),
        "project, channels_last": Performance(channels_last=True),
        "project, bf16 autocast": Performance(amp="bf16"),
        "project, bf16 + channels_last": Performance(amp="bf16", channels_last=True),
    }
    if args.device.startswith("cuda"):
        settings = {"project, fp32 + TF32": Performance(tf32=True)} | settings
    if args.compile:
        settings["project, compile (CUDA graphs on a GPU)"] = Performance(compile=True)
        settings["project, bf16 + channels_last + compile"] = Performance("bf16", True, True)
    settings = {} if args.only_pack else {name: (perf, 1) for name, perf in settings.items()}
    for runs in args.pack:  # R = 1 is the unpacked trainer (train_runs with one run)
        label = f"project, {runs} packed runs" if runs > 1 else "project, 1 run"
        settings[f"{label} (fp32)"] = (Performance(), runs)
        settings[f"{label}, bf16 + channels_last"] = (Performance("bf16", True), runs)
        if args.compile:
            settings[f"{label}, bf16 + channels_last + compile"] = (
                Performance("bf16", True, True),
                runs,
            )
    rows = []
    for masked in [kind == "masked" for kind in args.kinds]:
        kind = "masked retrain" if masked else "dense"
        contenders = {"paper-style loop": paper_style_pass(args, masked)}
        contenders |= {name: project_pass(args, masked, *setting) for name, setting in settings.items()}
        for name, run in list(contenders.items()):  # warm-up: allocator, oneDNN/cuDNN plans, compile
            try:
                started = time.perf_counter()
                run()
                print(f"  warm-up {kind} / {name}: {time.perf_counter() - started:.1f} s", flush=True)
            except Exception as error:  # an optional fast path that fails here is reported, not fatal
                rows.append([kind, name, f"failed: {type(error).__name__}: {str(error)[:150]}", "", ""])
                del contenders[name]
        rates = {name: [] for name in contenders}
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits all alike
            for name, run in contenders.items():
                rates[name].append(run())
                print(f"  {kind} / {name}: {rates[name][-1]:.0f} images/s", flush=True)
        base = max(rates["paper-style loop"])
        for name, values in rates.items():
            rows.append([kind, name, max(values), min(values), max(values) / base])
    body = table(["run", "loop", "images/s (best)", "images/s (worst)", "best vs paper-style"], rows)
    body += (
        f"\n\n{args.steps} steps of batch {BATCH} per pass, best of {args.repeats} interleaved passes; "
        f"paper-style DataLoader workers: {args.workers}; masked = uniform density {args.density}."
    )
    report("Training throughput, PreResNet-20, CIFAR-10-shaped data", args, body)


if __name__ == "__main__":
    main()
