"""Whole retrain jobs: ``python -m threeregime retrain`` with 1, 3 or 27 packed runs, timed as
processes, against the paper-style loop's steady-state rate.

This is bench_train.py's throughput at the level a Slurm job sees: process start, dataset load,
model build, compile, every epoch's test evaluation, resume checkpoints and the final writes are
all inside the clock.
The data is CIFAR-10-shaped (50 000 train / 10 000 test uint8 noise images); the recipe is the
epochs preset's retraining (LR rewinding: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 64,
crop + flip) cut to ``--epochs``; the runs are the preset's 9 densities x 3 retrain seeds of one
dense PreResNet-20 (random weights: the speed does not depend on them), so 27 runs are one
``retrain_pack: temperature`` job and 3 runs one ``cell`` job.

The paper-style loop is benchmarks/bench_train.py's, timed over one epoch after its first batch:
no start-up and no evaluation, so its rate is an upper bound and the ratios are lower bounds.

With ``--metrics`` it also times whole ``python -m threeregime metrics`` jobs (the preset's metrics
spec: 11 LMC points with BN recomputed on the whole training set, CKA, two Hessians) on two
retrain seeds made by the first retrain job, one process per runtime setting.

    python benchmarks/bench_retrain_job.py --device cuda --epochs 2      # on a GPU, ~6 minutes
    python benchmarks/bench_retrain_job.py --device cuda --epochs 2 --jobs fast-27 fp32-compile-27 \\
        tf32-compile-27 --metrics fp32 tf32 fast                      # the compiled contenders
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench_train import BATCH, paper_style_pass
from common import REPO, parser, report, setup, synthetic_cifar, table

PRESET = [REPO / "presets" / "base.yaml", REPO / "presets" / "epochs.yaml"]  # merged in order
EPOCH_LINE = re.compile(r": epoch \d+/\d+ iter .*\((\d+(?:\.\d+)?)s\)$", re.MULTILINE)
JOBS = {  # name: (label, runs, amp, channels_last, compile, tf32)
    "fast-27": ("27 runs (temperature), bf16 + channels_last + compile", 27, "bf16", True, True, False),
    "fp32-27": ("27 runs (temperature), fp32", 27, "none", False, False, False),
    "fp32-compile-27": (
        "27 runs (temperature), fp32 + compile (CUDA graphs)",
        27,
        "none",
        False,
        True,
        False,
    ),
    "tf32-compile-27": ("27 runs (temperature), TF32 + compile (CUDA graphs)", 27, "none", False, True, True),
    "fast-3": ("3 runs (cell), bf16 + channels_last + compile", 3, "bf16", True, True, False),
    "fp32-3": ("3 runs (cell), fp32", 3, "none", False, False, False),
    "fast-1": ("1 run, bf16 + channels_last + compile", 1, "bf16", True, True, False),
    "fp32-1": ("1 run, fp32 (the preset)", 1, "none", False, False, False),
}
# Metrics jobs: name: (label, amp, channels_last, compile, tf32), the runtime as the workflow
# would pass it (a metrics job trains nothing, so compile changes nothing in it). Its inputs are
# two retrain seeds of one pruned model, made by the run's first retrain job of several runs.
METRICS_JOBS = {
    "fp32": ("metrics, fp32 (the preset)", "none", False, False, False),
    "tf32": ("metrics, TF32", "none", False, False, True),
    "fast": ("metrics, bf16 + channels_last (gpu-fast overlay)", "bf16", True, True, False),
}


def prepare(folder: Path, cfg, train_images: int, test_images: int) -> tuple[Path, list[tuple[str, int]]]:
    """The dataset file and the preset's pruned models of one dense model, made by the
    project's own commands (the dense model untrained: ``stop_epoch`` 0): (data, [(pruned, seed)])."""
    from threeregime.cli import build_parser
    from threeregime.io.files import save_checkpoint

    def command(name: str, spec: dict, out: Path, *inputs: str) -> None:
        args = build_parser().parse_args([name, "--spec", json.dumps(spec), *inputs, "--out", str(out)])
        args.func(args)

    data, dense = folder / "data.pt", folder / "dense.pt"
    save_checkpoint(data, synthetic_cifar(train_images, test_images, seed=0), "dataset")
    spec = cfg.dense_spec(cfg.temperatures[0], cfg.seeds.dense[0]) | {"stop_epoch": 0}
    command("dense", spec, dense, "--data", str(data), "--runtime", '{"device": "cpu"}')
    runs = []
    for density in cfg.densities:
        pruned = folder / f"pruned-{density}.pt"
        command("prune", cfg.prune_spec(density), pruned, "--dense", str(dense))
        runs += [(str(pruned), seed) for seed in cfg.seeds.retrain]
    return data, runs


def job_config(cfg, args, amp: str, channels_last: bool, compile_: bool, tf32: bool):
    """The preset config with the runtime settings a job of this setting would get."""
    fast = {"amp": amp, "channels_last": channels_last, "compile": compile_, "tf32": tf32}
    runtime = replace(cfg.runtime, device=args.device, require_gpu=args.device != "cpu", **fast)
    return replace(cfg, runtime=runtime)


def timed_process(command: list[str], what: str) -> tuple[float, str]:
    """Run one ``python -m threeregime`` process: (wall seconds, its log); raise if it failed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {' | '.join(log.splitlines()[-3:])}")
    print(f"    {log.strip().splitlines()[-1][-150:]}", flush=True)
    return seconds, log


def retrain_job(
    folder: Path, cfg, data: Path, runs: list, name: str, args
) -> tuple[float, float, list[Path]]:
    """One ``retrain`` process over ``runs``, with the spec and runtime settings the workflow
    would pass for job ``name``: (wall seconds, seconds of its last epoch, output files)."""
    _, _, *setting = JOBS[name]
    job = job_config(cfg, args, *setting)
    command = [sys.executable, "-m", "threeregime", "retrain", "--data", str(data), "--threads"]
    command += [str(args.threads), "--spec", json.dumps(job.retrain_spec())]
    command += ["--runtime", json.dumps(asdict(job.runtime))]
    outs = [folder / f"out-{name}-{i}.pt" for i in range(len(runs))]
    for (pruned, seed), out in zip(runs, outs):
        command += ["--run", pruned, str(out), str(seed)]
    seconds, log = timed_process(command, "retrain job")
    epochs = EPOCH_LINE.findall(log)  # every run logs each epoch with the same duration
    return seconds, float(epochs[-1]) if epochs else float("nan"), outs


def metrics_job(folder: Path, cfg, data: Path, pair: list[Path], name: str, args) -> float:
    """One ``metrics`` process on a retrain pair, with the preset's metrics spec (11 LMC points,
    BN recomputed on the whole training set, CKA, both Hessians) and job ``name``'s runtime: wall
    seconds."""
    _, *setting = METRICS_JOBS[name]
    job = job_config(cfg, args, *setting)
    command = [sys.executable, "-m", "threeregime", "metrics", "--data", str(data), "--threads"]
    command += [str(args.threads), "--spec", json.dumps(job.metrics_spec())]
    command += ["--runtime", json.dumps(asdict(job.runtime)), "--a", str(pair[0]), "--b", str(pair[1])]
    labels = {"knob": cfg.knob.name, "temperature": cfg.temperatures[0], "density": cfg.densities[0]}
    seeds = cfg.seeds
    labels |= {"dense_seed": seeds.dense[0], "seed_a": seeds.retrain[0], "seed_b": seeds.retrain[1]}
    command += [f"--label={key}={value}" for key, value in labels.items()]
    command += ["--out", str(folder / f"metrics-{name}.json")]
    seconds, _ = timed_process(command, "metrics job")
    result = json.loads((folder / f"metrics-{name}.json").read_text())
    print(
        f"    mc {result['mc']:.4f}, CKA {result['cka_softmax']:.4f}, in-job seconds {result['seconds']:.1f}"
    )
    return seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="retraining epochs per run (default 1)")
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=4, help="paper-style DataLoader workers")
    p.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS), metavar="JOB",
                   help=f"retrain jobs, in this order (default all: {' '.join(JOBS)})")  # fmt: skip
    p.add_argument("--metrics", nargs="*", choices=list(METRICS_JOBS), default=[], metavar="SETTING",
                   help=f"also time whole metrics jobs ({' '.join(METRICS_JOBS)}) on the first "
                   "retrain job's outputs (needs a job of 3 or 27 runs)")  # fmt: skip
    p.add_argument("--no-paper", action="store_true", help="skip the paper-style baseline (ratios n/a)")
    args = p.parse_args()
    if args.metrics and not any(JOBS[name][1] >= 2 for name in args.jobs):
        p.error("--metrics: no job of --jobs has the two retrain seeds a metrics job compares")
    setup(args)
    from threeregime.config.load import load_config, merge_configs, read_config_file
    from threeregime.config.specs import grid_cells

    raw = merge_configs(*(read_config_file(layer) for layer in PRESET))
    cfg = load_config(raw, source=" + ".join(p.name for p in PRESET), check_paths=False)
    full_epochs = cfg.retrain_recipe().epochs
    cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    base = float("nan")
    if not args.no_paper:
        args.steps, args.density = args.train_images // BATCH - 1, 0.1
        paper = paper_style_pass(args, masked=True)
        paper()  # warm-up
        base = max(paper() for _ in range(args.repeats))
        print(f"  paper-style loop: {base:.0f} images/s", flush=True)
    rows = [["paper-style loop (steady state, no start-up or evaluation)", 1, "", "", base, 1.0, base, 1.0]]
    metric_rows, pair = [], None
    pairs = len(grid_cells(cfg.metrics_axes()))  # metrics jobs of the preset
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, runs = prepare(folder, cfg, args.train_images, args.test_images)
        for name in args.jobs:
            label, count = JOBS[name][:2]
            subset = runs[:count]  # 3: the seeds of density 0.05, one cell
            try:
                seconds, last_epoch, outs = retrain_job(folder, cfg, data, subset, name, args)
            except RuntimeError as error:
                rows.append([label, len(subset), f"failed: {str(error)[:200]}", "", "", "", "", ""])
                continue
            pair = pair or (outs[:2] if len(outs) >= 2 else None)
            images = len(subset) * args.train_images
            rate = images * args.epochs / seconds
            full_rate = images * full_epochs / (seconds + (full_epochs - args.epochs) * last_epoch)
            print(
                f"  {label}: {seconds:.1f} s, {rate:.0f} images/s, {full_rate:.0f} over a full job",
                flush=True,
            )
            row = [label, len(subset), round(seconds, 1), round(last_epoch, 1), rate, rate / base]
            rows.append(row + [full_rate, full_rate / base])
        for name in args.metrics if pair else []:
            try:
                seconds = metrics_job(folder, cfg, data, pair, name, args)
            except RuntimeError as error:
                metric_rows.append([METRICS_JOBS[name][0], f"failed: {str(error)[:200]}", ""])
                continue
            print(f"  {METRICS_JOBS[name][0]}: {seconds:.1f} s", flush=True)
            metric_rows.append([METRICS_JOBS[name][0], round(seconds, 1), seconds * pairs / 3600])
    headers = ["job", "runs", "wall s (whole process)", "last epoch s", "images/s", "vs paper-style"]
    headers += [f"images/s over {full_epochs} epochs", "vs paper-style"]
    body = table(headers, rows)
    body += (
        f"\n\n{args.epochs} epoch(s) of {args.train_images} training images per run, test evaluation "
        f"({args.test_images} images) after each epoch; images/s = runs x epochs x training images / "
        f"wall; over {full_epochs} epochs: the measured job plus {full_epochs} - {args.epochs} more "
        f"epochs of its last epoch's duration; paper-style DataLoader workers: {args.workers}; job "
        f"threads: {args.threads}."
    )
    if metric_rows:
        spec = cfg.metrics
        headers = [
            "metrics job",
            "wall s (whole process)",
            f"GPU-hours for the preset's {pairs} (one at a time)",
        ]
        body += "\n\n" + table(headers, metric_rows)
        body += (
            f"\n\nOne `python -m threeregime metrics` process on two retrain seeds of one pruned model "
            f"(outputs of the first retrain job above), timed from start to exit: {spec.lmc_points} LMC "
            f"points with BN recomputed on {spec.lmc_bn_samples or args.train_images} training images, "
            f"CKA on {min(spec.cka_samples, args.train_images)} images, both models' train error and "
            f"Hessian ({spec.hessian_samples} samples)."
        )
    report("Whole retrain jobs, PreResNet-20, CIFAR-10-shaped data", args, body)


if __name__ == "__main__":
    main()
