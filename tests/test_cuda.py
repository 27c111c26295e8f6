"""The CUDA paths against the CPU reference. Skipped without a GPU (CI has none); run them on a
GPU machine with ``python -m pytest tests/test_cuda.py``.

CPU and CUDA draw random numbers from different generators, so comparisons that must be exact
up to rounding use full-batch steps without augmentation (every step sees the same set of
images whatever the shuffle); the Hessian trace, whose probes differ, is compared within its
standard errors, and its top eigenvalue after convergence. TF32 is off, as in every job unless
``runtime.tf32`` is set: with PyTorch's default (TF32 convolutions) the eigenvalue and CKA
differed from the CPU by about 1e-3 on an H200. The compiled runs also check that inductor
recorded no CUDA-graph skip (a silent eager fallback would otherwise pass).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters  # inductor counts each CUDA-graph fallback here

from threeregime.compute.data import DeviceData
from threeregime.compute.hessian import HessianSettings, hessian_summary
from threeregime.compute.landscape import linear_mode_connectivity, model_outputs, output_similarity
from threeregime.compute.prune import compute_masks
from threeregime.compute.runtime import Performance, set_tf32
from threeregime.compute.train import RunSet, train, train_runs
from threeregime.config.settings import Recipe

from .reference import pyhessian_reference
from .test_fastpaths import _losses, cifar_payload, small_resnet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = "cuda"


@pytest.fixture(scope="module", autouse=True)
def true_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    set_tf32(False)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def payload() -> dict:
    return cifar_payload(256)


def _full_batch_run(payload, device, perf=Performance(), masks=None, epochs=8, optimizer="sgd"):
    """PreResNet-20 (width 0.25), one full-batch step per epoch, no augmentation."""
    model = small_resnet(seed=4).to(device)
    if perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = DeviceData(payload | {"augment": False}, device, perf.channels_last)
    recipe = Recipe(epochs=epochs, batch_size=256, lr=0.05, lr_milestones=(0.5,), optimizer=optimizer)
    state = train(model, data, recipe, (1, 3), masks=masks, perf=perf)
    return model, state


def _relative_distance(a: dict, b: dict) -> float:
    keys = [k for k, v in a.items() if v.is_floating_point()]
    flat_a = torch.cat([a[k].double().cpu().flatten() for k in keys])
    flat_b = torch.cat([b[k].double().cpu().flatten() for k in keys])
    return float((flat_a - flat_b).norm() / flat_a.norm())


@pytest.fixture(scope="module")
def reference(payload):
    torch.set_num_threads(1)
    masks = compute_masks(small_resnet(seed=4), 0.3, "uniform")
    return masks, _full_batch_run(payload, "cpu", masks=masks)


def test_cuda_training_matches_the_cpu_reference(payload, reference):
    masks, (_, cpu) = reference
    _, gpu = _full_batch_run(payload, CUDA, masks=masks)
    assert _losses(gpu) == pytest.approx(_losses(cpu), rel=1e-3)
    assert _relative_distance(cpu["model"], gpu["model"]) < 1e-3  # rounding only, after 8 steps
    for name, mask in masks.items():
        assert torch.all(gpu["model"][name].cpu()[~mask] == 0), name


@pytest.mark.parametrize(
    "perf, rel",
    [
        (Performance(channels_last=True), 1e-3),
        (Performance(amp="bf16"), 0.05),
        (Performance(amp="bf16", channels_last=True), 0.05),
        (Performance(compile=True), 1e-3),
        (Performance(amp="bf16", channels_last=True, compile=True), 0.05),
    ],
    ids=["channels_last", "bf16", "bf16+channels_last", "compile", "bf16+channels_last+compile"],
)
def test_cuda_fast_paths_follow_the_cpu_loss_curve(payload, reference, perf, rel):
    masks, (_, cpu) = reference
    counters.clear()
    _, fast = _full_batch_run(payload, CUDA, perf, masks=masks)
    assert counters["inductor"]["cudagraph_skips"] == 0, "CUDA graphs skipped: the step ran eager"
    assert _losses(fast) == pytest.approx(_losses(cpu), rel=rel, abs=rel)
    assert _losses(fast)[-1] < _losses(fast)[0], "still learns"
    for name, mask in masks.items():
        assert torch.all(fast["model"][name].cpu()[~mask] == 0), (perf, name)


def test_cuda_sam_with_cuda_graphs_follows_the_cpu(payload, reference):
    """SAM runs two compiled forwards per step (the second with BN frozen) through CUDA graphs."""
    masks, _ = reference
    _, cpu = _full_batch_run(payload, "cpu", masks=masks, epochs=4, optimizer="sam")
    counters.clear()
    _, gpu = _full_batch_run(payload, CUDA, Performance(compile=True), masks, epochs=4, optimizer="sam")
    assert counters["inductor"]["cudagraph_skips"] == 0, "CUDA graphs skipped: the step ran eager"
    assert _losses(gpu) == pytest.approx(_losses(cpu), rel=1e-3)
    assert _relative_distance(cpu["model"], gpu["model"]) < 1e-3
    for name, mask in masks.items():
        assert torch.all(gpu["model"][name].cpu()[~mask] == 0), name


@pytest.mark.parametrize("perf", [Performance(), Performance(compile=True)], ids=["fp32", "compile"])
def test_cuda_packed_runs_match_the_cpu_reference(payload, reference, perf):
    """Three runs packed into grouped layers (threeregime.compute.pack), each with its own mask: each
    follows its own unpacked CPU run (full-batch steps, so the random streams do not matter)."""
    masks, (_, cpu) = reference
    all_masks = [masks, compute_masks(small_resnet(seed=4), 0.6, "uniform"), None]
    data = DeviceData(payload | {"augment": False}, CUDA)
    recipe = Recipe(epochs=8, batch_size=256, lr=0.05, lr_milestones=(0.5,))
    models = [small_resnet(seed=4).to(CUDA) for _ in all_masks]
    streams = [(1, 3), (1, 4), (1, 5)]
    counters.clear()
    packed = train_runs(RunSet(models, streams, all_masks), data, recipe, perf=perf)
    assert counters["inductor"]["cudagraph_skips"] == 0, "CUDA graphs skipped: the step ran eager"
    for index, (run_masks, state) in enumerate(zip(all_masks, packed)):
        expected = cpu if index == 0 else _full_batch_run(payload, "cpu", masks=run_masks)[1]
        assert _losses(state) == pytest.approx(_losses(expected), rel=1e-3), index
        errors = [h["train_error"] for h in state["history"]]
        assert errors == pytest.approx([h["train_error"] for h in expected["history"]], abs=2 / 256)
        assert _relative_distance(expected["model"], state["model"]) < 1e-3, index
        for name, mask in (run_masks or {}).items():
            assert torch.all(state["model"][name].cpu()[~mask] == 0), (index, name)


def test_cuda_augmented_training_is_reproducible(payload):
    """Same seeds on the same GPU: the device-side crop/flip stream and the run repeat."""
    runs = []
    for _ in range(2):
        model = small_resnet(seed=4).to(CUDA)
        state = train(model, DeviceData(payload, CUDA), Recipe(epochs=2, batch_size=32, lr=0.05), (1, 3))
        runs.append(_losses(state))
    assert runs[0] == pytest.approx(runs[1], rel=1e-4)


@pytest.fixture(scope="module")
def trained(reference, payload):
    masks, (model, _) = reference
    x, y = next(DeviceData(payload, "cpu").eval_batches("train", 64, 64))
    return model.eval(), masks, x, y


@pytest.mark.parametrize("masked", [False, True])
def test_cuda_hessian_matches_the_cpu(trained, masked):
    model, masks, x, y = trained
    masks = masks if masked else None
    settings = HessianSettings(max_iter=100, tol=1e-6, probes=40, probe_batch=10, deflation=10)
    cpu = hessian_summary(model, x, y, masks, settings)
    gpu_model = small_resnet().to(CUDA)
    gpu_model.load_state_dict(model.state_dict())
    gpu_masks = {k: m.to(CUDA) for k, m in masks.items()} if masks else None
    gpu = hessian_summary(gpu_model.eval(), x.to(CUDA), y.to(CUDA), gpu_masks, settings)  # vmapped
    assert gpu["hessian_top_eigenvalue"] == pytest.approx(cpu["hessian_top_eigenvalue"], rel=1e-3)
    spread = math.hypot(cpu["hessian_trace_stderr"], gpu["hessian_trace_stderr"])
    assert abs(gpu["hessian_trace"] - cpu["hessian_trace"]) < 4 * spread + 1e-4 * abs(cpu["hessian_trace"])


def test_cuda_hessian_agrees_with_pyhessian_on_the_gpu(trained):
    model, _, x, y = trained
    gpu_model = small_resnet().to(CUDA)
    gpu_model.load_state_dict(model.state_dict())
    x, y = x.to(CUDA), y.to(CUDA)
    ours = hessian_summary(gpu_model.eval(), x, y, None, HessianSettings(100, 1e-6, 40, 10, deflation=10))
    theirs = pyhessian_reference(gpu_model.eval(), x, y, max_iter=100, tol=1e-6, probes=100)
    assert ours["hessian_top_eigenvalue"] == pytest.approx(theirs["hessian_top_eigenvalue"], rel=1e-2)
    spread = math.hypot(ours["hessian_trace_stderr"], theirs["hessian_trace_stderr"])
    assert abs(ours["hessian_trace"] - theirs["hessian_trace"]) < 4 * spread


def test_cuda_lmc_and_cka_match_the_cpu(payload):
    state_a, state_b = ({k: v.clone() for k, v in small_resnet(s).state_dict().items()} for s in (1, 2))
    results = {}
    for device, perf in (("cpu", Performance()), (CUDA, Performance()), (CUDA, Performance("bf16", True))):
        data = DeviceData(payload | {"augment": False}, device, perf.channels_last)
        model = small_resnet(0).to(device)
        if perf.channels_last:
            model = model.to(memory_format=torch.channels_last)
        lmc = linear_mode_connectivity(model, state_a, state_b, data, 5, 0, 100, perf)
        a, b = small_resnet(1).to(device).eval(), small_resnet(2).to(device).eval()
        outputs = [model_outputs(m, data.eval_batches("train", 100), perf) for m in (a, b)]
        results[device, perf.amp] = lmc | output_similarity(*outputs)
    cpu, gpu, bf16 = results["cpu", "none"], results[CUDA, "none"], results[CUDA, "bf16"]
    assert gpu["lmc_train_error"] == pytest.approx(cpu["lmc_train_error"], abs=2 / 256)
    assert gpu["lmc_train_loss"] == pytest.approx(cpu["lmc_train_loss"], rel=1e-4)
    assert gpu["mc"] == pytest.approx(cpu["mc"], abs=2 / 256)
    assert gpu["cka_logits"] == pytest.approx(cpu["cka_logits"], rel=1e-4)
    assert gpu["cka_softmax"] == pytest.approx(cpu["cka_softmax"], rel=1e-4)
    assert bf16["lmc_train_loss"] == pytest.approx(cpu["lmc_train_loss"], rel=0.03)
    assert bf16["cka_softmax"] == pytest.approx(cpu["cka_softmax"], abs=0.01)
