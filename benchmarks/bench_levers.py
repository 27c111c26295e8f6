"""The next levers toward the epochs preset in 24 GPU-hours, each measured as a ratio in one
process, the method unchanged (same epochs, samples and points).

* **Test evaluation in retraining.** A retrain job evaluates the test set after every epoch, but
  only the last ``test_error_last`` epochs enter the results. Timed: one evaluation of the test
  set by R packed runs, and R packed runs' steady training epoch (steps timed, scaled to
  ``--train-images``): the share the skipped evaluations would save.
* **Metrics job, where the time goes.** The pieces of one ``metrics`` job on two PreResNet-20s:
  both models' train error, both Hessians (the preset's settings), CKA, and LMC (11 points, BN
  recomputed on the whole training set at each).
* **LMC packed.** The 11 interpolated models as one packed model (threeregime.compute.pack), BN recomputed
  and errors evaluated for all points in one pass over the data, against the project's loop
  over points; same per-point errors expected up to grouped-kernel rounding (printed).

Each row is timed best-of ``--repeats`` after a warm-up. The models are random initialisations:
the cost does not depend on the weights.

    python benchmarks/bench_levers.py --device cpu --train-images 256 --test-images 128 --runs 3 \\
        --steps 2 --repeats 1 --hessian-samples 16                      # a CPU check of the code
    python benchmarks/bench_levers.py --device cuda                      # ~1.5 min on a GPU
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
from common import REPO, parser, preresnet20, report, setup, synthetic_cifar, table, timed

PRESET = [REPO / "presets" / "base.yaml", REPO / "presets" / "epochs.yaml"]  # merged in order
SETTINGS = {"fp32": ("none", False), "fast": ("bf16", True)}  # name: (amp, channels_last)


def best(func, device, repeats: int) -> tuple[float, object]:
    func()  # warm-up: allocator, cuDNN plans
    results = [timed(func, device) for _ in range(repeats)]
    return min(r[0] for r in results), results[0][1]


def packed_lmc(model, state_a: dict, state_b: dict, data, points: int, bn_samples: int, batch: int, perf):
    """LMC's per-point training errors with every point as one run of a packed model: BN
    recomputed for all points in one pass over the data, then all evaluated in one more."""
    import copy

    import torch

    from threeregime.compute.evaluate import evaluate_runs
    from threeregime.compute.landscape import interpolate_states, recalibrate_batchnorm
    from threeregime.compute.pack import Packed

    copies = []
    for t in np.linspace(0.0, 1.0, points):
        one = copy.deepcopy(model)
        one.load_state_dict(interpolate_states(state_a, state_b, float(t)))
        copies.append(one)
    packed = Packed(copies, torch.channels_last if perf.channels_last else None)
    batches = ((packed.replicate(x), y) for x, y in data.eval_batches("train", batch, bn_samples))
    recalibrate_batchnorm(packed.model, batches, perf)
    return [error for _, error in evaluate_runs(packed, data.eval_batches("train", batch), perf)]


def measure(perf, args, payload, spec) -> tuple[list, dict, tuple]:
    """One numeric setting: (test evaluation row, metrics job pieces, LMC row)."""
    import torch

    from threeregime.compute.data import DeviceData
    from threeregime.compute.evaluate import evaluate, evaluate_runs
    from threeregime.compute.hessian import HessianSettings, hessian_summary
    from threeregime.compute.landscape import linear_mode_connectivity, model_outputs, output_similarity
    from threeregime.compute.pack import Packed
    from threeregime.compute.prune import compute_masks
    from threeregime.compute.train import RunSet, train_runs
    from threeregime.config.settings import Recipe

    device = torch.device(args.device)
    data = DeviceData(payload, device, perf.channels_last)
    memory_format = torch.channels_last if perf.channels_last else None
    # --- a training epoch and a test evaluation of R packed runs ---
    model = preresnet20(device)
    if perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
    masks = compute_masks(model, 0.1, "uniform")
    packed = Packed([model] * args.runs, memory_format)
    recipe = Recipe(epochs=1, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps_data = DeviceData(synthetic_cifar(args.steps * 64, 64, seed=1), device, perf.channels_last)
    calls = [0]

    def train_pass():
        calls[0] += 1
        streams = [(1, calls[0], r) for r in range(args.runs)]
        return train_runs(RunSet(packed, streams, [masks] * args.runs), steps_data, recipe, perf=perf)

    train_s, _ = best(train_pass, device, args.repeats)
    test = lambda: data.eval_batches("test", spec.eval_batch_size)  # noqa: E731
    eval_s, _ = best(lambda: evaluate_runs(packed, test(), perf), device, args.repeats)
    epoch_s = train_s / args.steps * (args.train_images / 64)
    saved = (args.epochs - args.test_error_last) * eval_s / (args.epochs * (epoch_s + eval_s))
    eval_row = [args.runs, epoch_s, eval_s, eval_s / (epoch_s + eval_s), saved]
    print(f"  training epoch {epoch_s:.2f} s, test evaluation {eval_s:.2f} s ({args.runs} runs)", flush=True)
    # --- one metrics job's pieces on two models ---
    a, b = preresnet20(device, 1), preresnet20(device, 2)
    if perf.channels_last:
        a, b = (m.to(memory_format=torch.channels_last) for m in (a, b))
    train = lambda: data.eval_batches("train", spec.eval_batch_size)  # noqa: E731
    samples = min(spec.cka_samples, data.num_train)
    cka = lambda: data.eval_batches("train", spec.eval_batch_size, samples)  # noqa: E731
    x, y = next(data.eval_batches("train", spec.hessian_samples, spec.hessian_samples))
    hessian = HessianSettings.from_spec(asdict(spec))  # as a metrics job reads its spec

    def hessians():
        return [hessian_summary(m, x, y, masks, hessian) for m in (a, b)]

    state_a = {k: v.clone() for k, v in a.state_dict().items()}
    state_b = {k: v.clone() for k, v in b.state_dict().items()}
    lmc_args = (state_a, state_b, data, spec.lmc_points, spec.lmc_bn_samples, spec.eval_batch_size, perf)
    pieces = {}
    pieces["train error, 2 models"], _ = best(lambda: [evaluate(m, train(), perf) for m in (a, b)], device,
                                              args.repeats)  # fmt: skip
    pieces["Hessian, 2 models"], _ = best(hessians, device, args.repeats)
    outputs = lambda m: model_outputs(m, cka(), perf)  # noqa: E731
    pieces["CKA"], _ = best(lambda: output_similarity(outputs(a), outputs(b)), device, args.repeats)
    lmc_s, serial = best(lambda: linear_mode_connectivity(a, *lmc_args), device, args.repeats)
    pieces[f"LMC ({spec.lmc_points} points)"] = lmc_s
    print("  metrics job pieces: " + ", ".join(f"{k} {v:.2f} s" for k, v in pieces.items()), flush=True)
    # --- LMC: the points packed into one model ---
    packed_s, errors = best(lambda: packed_lmc(a, *lmc_args), device, args.repeats)
    diff = max(abs(e - s) for e, s in zip(errors, serial["lmc_train_error"]))
    print(f"  LMC packed {packed_s:.2f} s vs {lmc_s:.2f} s, max error difference {diff:.2g}", flush=True)
    return eval_row, pieces, (lmc_s, packed_s, lmc_s / packed_s, diff)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=27, help="packed retrain runs (27: a temperature job)")
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per pass")
    p.add_argument("--test-error-last", type=int, default=5)
    p.add_argument("--epochs", type=int, default=160)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--hessian-samples", type=int, default=0, help="CPU tests: fewer than the preset's")
    args = p.parse_args()
    setup(args)
    from threeregime.compute.runtime import Performance
    from threeregime.config.load import load_config, merge_configs, read_config_file

    raw = merge_configs(*(read_config_file(layer) for layer in PRESET))
    spec = load_config(raw, check_paths=False).metrics
    if args.hessian_samples:
        spec = replace(spec, hessian_samples=args.hessian_samples, hessian_max_iter=20, hessian_probes=2)
    payload = synthetic_cifar(args.train_images, args.test_images, seed=0)
    rows_eval, rows_metrics, rows_lmc = [], [], []
    for name in args.settings:
        perf = Performance(*SETTINGS[name])
        eval_row, pieces, lmc_row = measure(perf, args, payload, spec)
        rows_eval.append([name, *eval_row])
        total = sum(pieces.values())
        rows_metrics += [[name, piece, seconds, seconds / total] for piece, seconds in pieces.items()]
        rows_lmc.append([name, *lmc_row])
        print(f"  {name}: done", flush=True)
    body = "Test evaluation during retraining:\n\n" + table(
        ["setting", "packed runs", "training epoch s (eager steps, scaled)", "test evaluation s",
         "share of an epoch", f"saved over {args.epochs} epochs keeping the last {args.test_error_last}"],
        rows_eval,
    )  # fmt: skip
    body += "\n\nOne metrics job's pieces (the epochs preset's metrics settings):\n\n"
    body += table(["setting", "piece", "s", "share"], rows_metrics)
    body += "\n\nLMC with the points packed into one model:\n\n" + table(
        ["setting", "loop over points s", "packed s", "speed-up", "max |error difference| over points"],
        rows_lmc,
    )
    body += (
        f"\n\n{args.train_images} training / {args.test_images} test CIFAR-shaped images; training epoch "
        f"from {args.steps} timed steps of batch 64 (eager, no CUDA graphs: with graphs the share of "
        f"evaluation is larger); best of {args.repeats} after a warm-up."
    )
    if args.hessian_samples:
        body += f" Hessian cut to {args.hessian_samples} samples, 20 iterations, 2 probes (a test size)."
    report("Levers: test evaluation, metrics job pieces, packed LMC", args, body)


if __name__ == "__main__":
    main()
