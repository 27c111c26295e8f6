"""Several training processes on one GPU: aggregate images/s of K concurrent trainers.

PreResNet-20 at batch 64 is too small to keep a modern GPU busy: one process spends most of
its time launching kernels. Snakemake can run several retrain jobs on one GPU (a local
``--resources gpu=K``, or Slurm GPU sharding/MPS on a cluster); this measures what that buys.
Each of K worker processes builds its model and device-resident data, runs one warm-up pass
of the project's trainer, waits at a barrier, then runs ``--steps`` timed steps; the aggregate
rate is all images over the span from the first start to the last finish.

    python benchmarks/bench_share.py --device cuda --steps 300 --procs 1 2 4 8
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train import BATCH, project_pass
from common import parser, report, setup, table


def worker(args) -> None:
    """One trainer (bench_train's project pass, masked retraining): warm up, signal ready, wait
    for the go file, time a pass, print JSON."""
    from threeregime.compute.runtime import Performance

    setup(args)
    run = project_pass(args, True, Performance(args.amp, args.channels_last, tf32=args.tf32))
    run()  # warm-up
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.005)
    start = time.time()
    run()  # synchronizes the device before it returns
    print(json.dumps({"start": start, "end": time.time(), "images": args.steps * BATCH}))


def measure(args, procs: int, amp: str, channels_last: bool) -> tuple[float, float]:
    """(aggregate images/s, slowest single process images/s) for ``procs`` concurrent trainers."""
    with tempfile.TemporaryDirectory() as folder:
        go = Path(folder) / "go"
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--steps", str(args.steps)]
        command += ["--threads", str(args.threads), "--density", str(args.density)]
        command += ["--amp", amp, "--go", str(go)]
        command += ["--channels-last"] if channels_last else []
        command += ["--tf32"] if args.tf32 else []
        workers = []
        try:
            for i in range(procs):
                ready = ["--ready", str(Path(folder) / f"ready{i}")]
                workers.append(subprocess.Popen(command + ready, stdout=subprocess.PIPE, text=True))
            while not all((Path(folder) / f"ready{i}").exists() for i in range(procs)):
                if any(w.poll() not in (None, 0) for w in workers):
                    raise RuntimeError("a worker failed before its timed pass")
                time.sleep(0.05)
            go.touch()
            results = []
            for w in workers:
                out, _ = w.communicate()
                if w.returncode != 0:
                    raise RuntimeError(f"worker exited with {w.returncode}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:  # never leave a worker waiting for a go file that is about to be deleted
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    slowest = min(r["images"] / (r["end"] - r["start"]) for r in results)
    return sum(r["images"] for r in results) / span, slowest


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="timed steps per process")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--density", type=float, default=0.1, help="mask density for retraining")
    p.add_argument("--worker", action="store_true", help="internal: one timed trainer")
    p.add_argument("--amp", default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--ready")
    p.add_argument("--go")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    setup(args)
    rows = []
    for amp, channels_last, label in (
        ("none", False, "fp32 (presets)"),
        ("bf16", True, "bf16 + channels_last"),
    ):
        base = None
        for procs in args.procs:
            best = max(
                (measure(args, procs, amp, channels_last) for _ in range(args.repeats)), key=lambda r: r[0]
            )
            base = base or best[0]
            rows.append([label, procs, best[0], best[1], best[0] / base])
    body = table(["trainer", "processes", "aggregate images/s", "slowest process images/s", "vs 1"], rows)
    body += (
        f"\n\nMasked retraining (uniform density {args.density}), batch {BATCH}, {args.steps} timed "
        f"steps per process after a warm-up pass, best of {args.repeats}; {args.threads} torch CPU "
        "thread(s) each."
    )
    report("Several trainers sharing one device", args, body)


if __name__ == "__main__":
    main()
