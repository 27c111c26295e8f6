"""(1c) Whole retrain jobs: ``python -m threeregime retrain`` with 1, 3 or 27 packed runs, timed as
processes, against the paper-style loop's steady-state rate.

This is (1) at the level a Slurm job sees: process start, dataset load, model build, compile,
every epoch's test evaluation, resume checkpoints and the final writes are all inside the clock.
The data is CIFAR-10-shaped (50 000 train / 10 000 test uint8 noise images); the recipe is the
epochs preset's retraining (LR rewinding: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 64,
crop + flip) cut to ``--epochs``; the runs are the preset's 9 densities x 3 retrain seeds of one
dense PreResNet-20 (random weights: the speed does not depend on them), so 27 runs are one
``retrain_pack: temperature`` job and 3 runs one ``cell`` job.

The paper-style loop is benchmarks/bench_train.py's, timed over one epoch after its first batch:
no start-up and no evaluation, so its rate is an upper bound and the ratios are lower bounds.

    python benchmarks/bench_retrain_job.py --device cuda --epochs 2      # on a GPU, ~6 minutes
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
JOBS = {  # label: (runs, amp, channels_last, compile)
    "27 runs (temperature), bf16 + channels_last + compile": (27, "bf16", True, True),
    "27 runs (temperature), fp32": (27, "none", False, False),
    "3 runs (cell), bf16 + channels_last + compile": (3, "bf16", True, True),
    "3 runs (cell), fp32": (3, "none", False, False),
    "1 run, bf16 + channels_last + compile": (1, "bf16", True, True),
    "1 run, fp32 (the preset)": (1, "none", False, False),
}


def prepare(folder: Path, cfg, train_images: int, test_images: int) -> tuple[Path, list[tuple[str, int]]]:
    """The dataset file and the preset's pruned models of one dense model, made by the
    project's own commands (the dense model untrained: ``stop_epoch`` 0): (data, [(pruned, seed)])."""
    from threeregime.cli import build_parser
    from threeregime.io import save_checkpoint

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


def retrain_job(folder: Path, cfg, data: Path, runs: list, setting: tuple, args) -> tuple[float, float]:
    """One ``retrain`` process over ``runs``, with the spec and runtime settings the workflow
    would pass for ``setting``: (wall seconds, seconds of its last epoch)."""
    _, amp, channels_last, compile_ = setting
    fast = {"amp": amp, "channels_last": channels_last, "compile": compile_}
    job = replace(
        cfg, runtime=replace(cfg.runtime, device=args.device, require_gpu=args.device != "cpu", **fast)
    )
    command = [sys.executable, "-m", "threeregime", "retrain", "--data", str(data), "--threads"]
    command += [str(args.threads), "--spec", json.dumps(job.retrain_spec())]
    command += ["--runtime", json.dumps(asdict(job.runtime))]
    for i, (pruned, seed) in enumerate(runs):
        command += ["--run", pruned, str(folder / f"out-{len(runs)}-{amp}-{compile_}-{i}.pt"), str(seed)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"retrain job failed ({done.returncode}): {' | '.join(log.splitlines()[-3:])}")
    epochs = EPOCH_LINE.findall(log)  # every run logs each epoch with the same duration
    print(f"    {log.strip().splitlines()[-1][-150:]}", flush=True)
    return seconds, float(epochs[-1]) if epochs else float("nan")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="retraining epochs per run (default 1)")
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=4, help="paper-style DataLoader workers")
    p.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS), metavar="JOB")
    args = p.parse_args()
    setup(args)
    import yaml
    from snakemake.utils import update_config

    from threeregime.config import load_config

    raw: dict = {}
    for layer in PRESET:
        update_config(raw, yaml.safe_load(layer.read_text()))
    cfg = load_config(raw, source=" + ".join(p.name for p in PRESET), check_paths=False)
    full_epochs = cfg.retrain_recipe().epochs
    cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    args.steps, args.density = args.train_images // BATCH - 1, 0.1
    paper = paper_style_pass(args, masked=True)
    paper()  # warm-up
    base = max(paper() for _ in range(args.repeats))
    print(f"  paper-style loop: {base:.0f} images/s", flush=True)
    rows = [["paper-style loop (steady state, no start-up or evaluation)", 1, "", "", base, 1.0, base, 1.0]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, runs = prepare(folder, cfg, args.train_images, args.test_images)
        for label in args.jobs:
            setting = JOBS[label]
            subset = runs[: setting[0]]  # 3: the seeds of density 0.05, one cell
            try:
                seconds, last_epoch = retrain_job(folder, cfg, data, subset, setting, args)
            except RuntimeError as error:
                rows.append([label, len(subset), f"failed: {str(error)[:200]}", "", "", "", "", ""])
                continue
            images = len(subset) * args.train_images
            rate = images * args.epochs / seconds
            full_rate = images * full_epochs / (seconds + (full_epochs - args.epochs) * last_epoch)
            print(
                f"  {label}: {seconds:.1f} s, {rate:.0f} images/s, {full_rate:.0f} over a full job",
                flush=True,
            )
            row = [label, len(subset), round(seconds, 1), round(last_epoch, 1), rate, rate / base]
            rows.append(row + [full_rate, full_rate / base])
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
    report("Whole retrain jobs, PreResNet-20, CIFAR-10-shaped data", args, body)


if __name__ == "__main__":
    main()
