"""The language-model track: the shipped byte-level corpus (windows, split, checksum), the LLaMA
entries (shapes, what is pruned, the optional transformers), the tokens knob, Wanda and N:M on
a transformer's 3D activations, the LM's metrics (perplexity, the loss barrier, CKA of the final
hidden states) on known cases, and a tiny version of presets/overlays/lm-cpu.yaml through the
real workflow."""

from __future__ import annotations

import copy
import json
import math
import platform
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from threeregime.compute.data import DataError, DeviceData, load_corpus
from threeregime.config.load import load_config, merge_configs, read_config_file
from threeregime.config.settings import ConfigError, DataConfig, MetricsConfig, ModelConfig, Recipe
from threeregime.registry.datasets import (
    DATASETS,
    PYSTDLIB,
    PYSTDLIB_PYTHON,
    VALIDATION_EVERY,
    data_file_problem,
    file_sha256,
)
from threeregime.registry.models import MODELS, weight_shapes

from .conftest import REPO, snakemake, write_config

OVERLAY = REPO / "presets" / "overlays" / "lm-cpu.yaml"
LM_CONFIG = {
    "run_name": "lm",
    "data": {"name": "pystdlib", "num_samples": 200, "context_length": 16},
    "model": {"name": "llama_tiny", "width": 0.5},
    "train": {"epochs": 2, "batch_size": 20, "lr": 0.3, "weight_decay": 0.0},
    "knob": {"name": "tokens", "values": [2880, 5760]},  # 1 and 2 epochs of 9 x 20 x 16 tokens
    "prune": {"method": "wanda", "calibration_samples": 8, "densities": [0.5]},
    "seeds": {"dense": [1], "retrain": [1, 2]},
    "runtime": {"device": "cpu", "threads": 1, "retrain_pack": "none"},
}


def _needs_transformers():
    """Skip where transformers (the lm extra) is missing: the models need it, and so does the
    validation of any config naming one."""
    pytest.importorskip("transformers", reason="the LM models need transformers: pip install -e '.[lm]'")


def _lm_config(**sections) -> dict:
    config = copy.deepcopy(LM_CONFIG)
    for name, values in sections.items():
        config[name] = config.get(name, {}) | values if isinstance(values, dict) else values
    return config


def _data(num_samples: int = 200, context_length: int = 16) -> DeviceData:
    cfg = DataConfig(name="pystdlib", num_samples=num_samples, context_length=context_length)
    return DeviceData(load_corpus(cfg), "cpu")


def _model(seed: int = 1):
    from threeregime.compute.models import init_model

    return init_model(ModelConfig("llama_tiny", 0.5), 1, 256, seed)


@pytest.fixture(scope="module")
def trained():
    """A llama_tiny (width 0.5) trained for 3 epochs on 180 windows of 16 bytes, and its data."""
    _needs_transformers()
    from threeregime.compute.train import train

    torch.set_num_threads(1)
    data = _data()
    model = _model()
    train(model, data, Recipe(epochs=3, batch_size=20, lr=0.3, weight_decay=0.0, lr_milestones=()), (0, 1))
    return model, data


# ----------------------------------------------------------------------------- the corpus
def test_the_shipped_corpus_is_the_registered_one():
    assert data_file_problem(PYSTDLIB) is None
    assert file_sha256(PYSTDLIB.location) == PYSTDLIB.sha256
    assert PYSTDLIB.location.stat().st_size > 500_000
    assert (PYSTDLIB.location.parent / "PYTHON-LICENSE.txt").read_text().count(
        "PYTHON SOFTWARE FOUNDATION"
    ) >= 1
    text = PYSTDLIB.location.read_text(encoding="utf-8")
    assert [line for line in text.splitlines() if line.startswith("# ===== Lib/")] == [
        f"# ===== Lib/{name} =====" for name in PYSTDLIB.sources
    ]


@pytest.mark.skipif(
    platform.python_version() != PYSTDLIB_PYTHON, reason=f"built from Python {PYSTDLIB_PYTHON}"
)
def test_the_build_script_reproduces_the_corpus_byte_for_byte():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_corpus.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sha256 {PYSTDLIB.sha256}; registered {PYSTDLIB.sha256}" in result.stdout


def test_windows_are_next_byte_pairs_evenly_spread_with_every_tenth_held_out():
    corpus = PYSTDLIB.location.read_bytes()
    payload = load_corpus(DataConfig(name="pystdlib", num_samples=300, context_length=24))
    assert payload["train_x"].shape == (270, 24) and payload["test_x"].shape == (30, 24)
    assert payload["train_x"].dtype == torch.int64 and payload["num_classes"] == 256
    stride = (len(corpus) - 1) // 300
    every = VALIDATION_EVERY
    assert every == 10
    # (split, row in the split, window index): window 9 is the first validation window
    for split, row, window in [("train", 0, 0), ("train", 8, 8), ("train", 9, 10), ("train", 269, 298),
                               ("test", 0, 9), ("test", 1, 19), ("test", 29, 299)]:  # fmt: skip
        x, y = payload[f"{split}_x"], payload[f"{split}_y"]
        start = window * stride
        assert bytes(x[row].tolist()) == corpus[start : start + 24]
        assert bytes(y[row].tolist()) == corpus[start + 1 : start + 25]  # each next byte
    again = load_corpus(DataConfig(name="pystdlib", num_samples=300, context_length=24))
    assert all(torch.equal(payload[k], again[k]) for k in ("train_x", "train_y", "test_x", "test_y"))


def test_a_corpus_with_another_checksum_is_refused_in_one_line(tmp_path, monkeypatch):
    _needs_transformers()  # a config naming a LLaMA validates only with transformers
    tampered = tmp_path / "pystdlib.txt"
    tampered.write_bytes(PYSTDLIB.location.read_bytes().replace(b"def ", b"fed ", 1))
    problem = data_file_problem(PYSTDLIB, tampered)
    assert (
        problem.startswith(f"{tampered}: sha256 ") and f"is not the registered {PYSTDLIB.sha256}" in problem
    )
    assert "\n" not in problem
    # the same file registered in the entry: refused by validation and by the loader
    from dataclasses import replace

    entry = DATASETS["pystdlib"]
    other = replace(PYSTDLIB, path=str(tampered))  # an absolute path stays as it is
    monkeypatch.setitem(DATASETS, "pystdlib", replace(entry, files=(other,)))
    with pytest.raises(ConfigError) as error:
        load_config(_lm_config())
    message = str(error.value)
    assert message.startswith("config: data.name: pystdlib: ") and "is not the registered" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="is not the registered"):
        load_corpus(DataConfig(name="pystdlib", num_samples=200, context_length=16))


def test_windows_that_do_not_fit_the_corpus_are_refused_at_validation():
    _needs_transformers()  # a config naming a LLaMA validates only with transformers
    with pytest.raises(ConfigError, match=r"data.num_samples: 40000 windows of 64 \+ 1 bytes do not fit"):
        load_config(_lm_config(data={"num_samples": 40000, "context_length": 64}))


# ----------------------------------------------------------------------------- models and validation
def test_a_missing_transformers_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what Python does for a blocked import
    with pytest.raises(ConfigError) as error:
        load_config(_lm_config())
    assert str(error.value) == (
        "config: model.name: llama_tiny needs the optional package transformers: "
        "pip install -e '.[lm]' (transformers 5.x)"
    )


def test_a_llama_is_never_packed():
    _needs_transformers()  # a config naming a LLaMA validates only with transformers
    with pytest.raises(
        ConfigError, match="runtime.retrain_pack: cell: llama_tiny has layers without a packed form"
    ):
        load_config(_lm_config(runtime={"retrain_pack": "cell"}))


@pytest.mark.parametrize("name", ["llama_tiny", "llama_small", "llama_medium"])
def test_registered_shapes_are_the_modules_and_lm_head_and_embeddings_are_kept(name):
    _needs_transformers()
    from threeregime.compute.models import build_model, prunable_layers

    for width in (1.0, 0.5):
        model = build_model(ModelConfig(name, width), 1, 256)
        layers = prunable_layers(model)
        assert {k: tuple(v.shape) for k, v in layers.items()} == weight_shapes(name, width, "pystdlib")
        assert "lm_head.weight" not in layers and "model.embed_tokens.weight" not in layers
        assert {k.split(".")[-2] for k in layers} == {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        }  # fmt: skip
        assert model.config._attn_implementation == "eager"
    assert not MODELS[name].packs


def test_the_output_is_logits_per_position_in_cross_entropys_layout():
    _needs_transformers()
    model = _model()
    x = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (3, 256, 10)
    # causal: a later byte never changes an earlier position's prediction
    changed = x.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    assert torch.allclose(model(changed)[:, :, :7], logits[:, :, :7], atol=1e-6)


# ----------------------------------------------------------------------------- the tokens knob
def test_the_tokens_knob_reads_checkpoints_of_one_run():
    _needs_transformers()  # a config naming a LLaMA validates only with transformers
    cfg = load_config(_lm_config())
    assert cfg.units_per_epoch() == 9 * 20 * 16
    assert cfg.temperatures == ["5760", "2880"]  # coldest (most tokens) first
    assert [cfg.dense_stop_epoch(t) for t in ("2880", "5760")] == [1, 2]
    assert cfg.dense_parent("5760") == "2880" and cfg.dense_parent("2880") is None
    assert cfg.dense_spec("5760", 1)["stop_epoch"] == 2
    assert cfg.analysis_spec()["regimes"]["reference_temperature"] == 5760  # train.epochs x tokens


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"knob": {"name": "tokens", "values": [3000]}},
            "knob.values[0]: 3000 tokens is not a whole number of epochs of 2880 tokens (the base "
            "recipe on this data); use multiples of 2880",
        ),
        (
            {"knob": {"name": "tokens", "values": [8640]}},
            "knob.values: epochs [8640] exceed train.epochs=2 (5760 tokens)",
        ),
    ],
)
def test_token_values_are_checked_in_one_line(change, message):
    _needs_transformers()  # a config naming a LLaMA validates only with transformers
    with pytest.raises(ConfigError) as error:
        load_config(_lm_config(**change))
    assert str(error.value) == f"config: {message}"


def test_the_tokens_knob_needs_a_token_dataset(tiny_config):
    tiny_config["knob"] = {"name": "tokens", "values": [100]}
    with pytest.raises(
        ConfigError, match="knob.name: the tokens knob needs data made of tokens; mnist1d has none"
    ):
        load_config(tiny_config)


def test_cka_of_hidden_states_is_classified_only_when_measured():
    _needs_transformers()  # a config naming a LLaMA validates only with transformers
    with pytest.raises(
        ConfigError, match=r"regimes.cka_metric: cka_hidden is measured only with metrics.cka_hidden: true"
    ):
        load_config(_lm_config(regimes={"cka_metric": "cka_hidden"}))
    load_config(_lm_config(regimes={"cka_metric": "cka_hidden"}, metrics={"cka_hidden": True}))


# ----------------------------------------------------------------------------- token-level numbers
def test_loss_error_and_perplexity_count_every_token(trained):
    from threeregime.compute.evaluate import evaluate
    from threeregime.compute.landscape import perplexity_metrics

    model, data = trained
    loss, error = evaluate(model, data.eval_batches("test", 7))
    with torch.no_grad():
        logits = model(data.test_x).transpose(1, 2).reshape(-1, 256).double()
    targets = data.test_y.reshape(-1)
    assert loss == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)
    assert error == pytest.approx(float((logits.argmax(1) != targets).double().mean()), abs=1e-12)
    numbers = perplexity_metrics(model, data, MetricsConfig(eval_batch_size=11))
    assert numbers["test_loss"] == pytest.approx(loss, rel=1e-6)  # other batches: float32 sums
    assert numbers["perplexity"] == pytest.approx(math.exp(numbers["test_loss"]), rel=1e-12)
    assert 1 < numbers["perplexity"] < 256  # better than a uniform guess over bytes


def test_training_history_counts_tokens(trained):
    from threeregime.compute.train import train

    model, data = trained
    state = train(_model(), data, Recipe(epochs=1, batch_size=20, lr=0.3, lr_milestones=()), (0, 1))
    (record,) = state["history"]
    assert (
        record["iteration"] == 9
        and 0 < record["train_error"] < 1
        and record["train_loss"] < math.log(256) + 0.5
    )


def test_wanda_norms_a_linear_layers_input_over_every_token(trained):
    from threeregime.compute.calibration import input_norms

    model, data = trained
    x = data.train_x[:6]
    seen = []
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    seen = {"x": seen[0]}
    assert seen["x"].shape == (6, 16, model.config.intermediate_size)  # batch x tokens x features
    name = "model.layers.1.mlp.down_proj.weight"
    norms = input_norms(model, x, [name])[name]
    expected = seen["x"].double().pow(2).sum(dim=(0, 1)).sqrt()
    assert torch.allclose(norms, expected, rtol=1e-10)


def _token_wanda_example():
    """A Linear(4, 2) layer (pruned) and a classifier applied to (batch 2, tokens 3, features 4)
    inputs, as a transformer's projections are. By hand, summing over both batch and tokens:
    ||X_j||^2 = [4, 9, 1, 16], ||X_j|| = [2, 3, 1, 4]."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False), torch.nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 1.5, 4.0, 0.5], [-1.0, 0.5, -3.0, -0.5]]))
    inputs = torch.tensor(
        [
            [[1.0, 2.0, 0.0, 2.0], [1.0, 0.0, 1.0, 2.0], [0.0, 2.0, 0.0, 0.0]],
            [[1.0, 0.0, 0.0, 2.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]],
        ]
    )
    return model, inputs


def test_wanda_on_token_inputs_matches_a_hand_computed_example():
    from threeregime.compute.prune import compute_masks, score_wanda

    model, inputs = _token_wanda_example()
    ranked = score_wanda({"0.weight": model[0].weight.detach()}, 0.5, {}, model=model, inputs=inputs)
    # S_ij = |W_ij| ||X_j||: row 0 |[2, 1.5, 4, 0.5]| x [2, 3, 1, 4]; row 1 |[-1, 0.5, -3, -0.5]| x the same
    expected = torch.tensor([[4.0, 4.5, 4.0, 2.0], [2.0, 1.5, 3.0, 2.0]], dtype=torch.float64)
    assert torch.equal(ranked.scores["0.weight"], expected)
    assert ranked.densities == {"0.weight": 0.5}
    masks = compute_masks(model, 0.5, "wanda", inputs=inputs)
    # per row, top 2 of 4: row 0 keeps 4.5 (col 1) and the first of the tied 4s (col 0, not col 2);
    # row 1 keeps 3 (col 2) and the first of the tied 2s (col 0, not col 3)
    assert masks["0.weight"].int().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0]]
    assert masks["0.weight"].sum(dim=1).tolist() == [2, 2] and int(masks["0.weight"].sum()) == 4
    # (a threshold over the whole layer would keep 4.5, 4, 4, 3: three of row 0, one of row 1;
    # |W| alone would keep row 0's cols 2 and 0: the input norms move the choice to col 1)
    # uniform magnitude ranks the whole layer's |W|: 4, 3, 2, 1.5, three of row 0, one of row 1
    assert compute_masks(model, 0.5, "uniform")["0.weight"].int().tolist() == [[1, 1, 1, 0], [0, 0, 1, 0]]
    assert compute_masks(model, 0.25, "wanda", inputs=inputs)["0.weight"].int().tolist() == [
        [0, 1, 0, 0],
        [0, 0, 1, 0],
    ]
    assert compute_masks(model, 0.5, "wanda", granularity="2:4", inputs=inputs)["0.weight"].equal(
        masks["0.weight"]
    )


@pytest.mark.parametrize("granularity", ["2:4", "4:8", "unstructured"])
def test_wanda_masks_keep_half_of_every_row_or_group(trained, granularity):
    from threeregime.compute.prune import compute_masks

    model, data = trained
    masks = compute_masks(model, 0.5, "wanda", {"calibration_samples": 8}, granularity, 2, data.train_x[:8])
    assert len(masks) == 2 * 7
    m = 8 if granularity == "unstructured" else int(granularity.split(":")[1])
    for name, mask in masks.items():
        groups = mask.reshape(mask.shape[0], -1).reshape(-1, m)
        counts = groups.sum(1)
        if granularity == "unstructured":  # per row: every row keeps half of its inputs
            assert (mask.sum(1) == mask.shape[1] // 2).all(), name
        else:
            assert (counts == m // 2).all(), name


def test_magnitude_methods_prune_llama_layers(trained):
    from threeregime.compute.prune import compute_masks, mask_density

    model, _ = trained
    uniform = compute_masks(model, 0.3, "uniform")
    assert all(abs(float(m.float().mean()) - 0.3) < 0.01 for m in uniform.values())
    global_ = compute_masks(model, 0.3, "global")
    assert mask_density(global_) == pytest.approx(0.3, abs=1e-4)
    assert len({round(float(m.float().mean()), 3) for m in global_.values()}) > 1  # layers differ


# ----------------------------------------------------------------------------- LMC and CKA, known cases
def _flipped_linears(model):
    """The Linear layers whose sign the copy below flips (and its midpoint zeroes), per block."""
    for layer in model.model.layers:
        yield from (layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.up_proj, layer.mlp.down_proj)


def _sign_flipped(model):
    """The same function with the opposite sign on v_proj rows / o_proj columns and on up_proj
    rows / down_proj columns: silu(g) * (-u) through -D is silu(g) * u through D. The midpoint
    of a model and this copy has those four weights at zero: no attention and no MLP output."""
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        for linear in _flipped_linears(flipped):
            linear.weight.neg_()
    return flipped


def test_streamed_cka_equals_linear_cka_on_the_whole_representation():
    from threeregime.compute.landscape import CrossMoments, linear_cka

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(90, 6, generator=generator) + 3.0  # an offset: centring matters
    y = x @ torch.randn(6, 4, generator=generator) + 0.5 * torch.randn(90, 4, generator=generator)
    moments = CrossMoments()
    for start in range(0, 90, 25):  # uneven chunks: 25, 25, 25, 15
        moments.add(x[start : start + 25], y[start : start + 25])
    assert moments.n == 90
    assert moments.cka() == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert 0.3 < moments.cka() < 0.999
    same = CrossMoments()
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    same.add(x, 2.0 * x.double() @ rotation)  # CKA is invariant to rotation and isotropic scaling
    assert same.cka() == pytest.approx(1.0, abs=1e-10)


def test_identical_models_have_no_barrier_and_cka_one(trained):
    from threeregime.compute.landscape import pair_metrics
    from threeregime.compute.runtime import Performance

    model, data = trained
    settings = MetricsConfig(
        lmc_points=3, cka_samples=40, eval_batch_size=60, options={"lmc_measure": "loss", "cka_hidden": True}
    )
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    result = pair_metrics(a, b, model.state_dict(), model.state_dict(), data, settings, Performance())
    assert result["barrier"] == pytest.approx(0.0, abs=1e-6) and result["mc"] == pytest.approx(0.0, abs=1e-6)
    for key in ("cka_hidden", "cka_logits", "cka_softmax"):
        assert result[key] == pytest.approx(1.0, abs=1e-9), key
    assert len(set(result["lmc_train_loss"])) == 1


def test_a_planted_barrier_is_measured_in_loss(trained):
    from threeregime.compute.evaluate import evaluate
    from threeregime.compute.landscape import pair_metrics
    from threeregime.compute.runtime import Performance

    model, data = trained
    flipped = _sign_flipped(model)
    # the same function at both ends: equal outputs, equal hidden states
    x = data.train_x[:5]
    with torch.no_grad():
        assert torch.allclose(model(x), flipped(x), atol=1e-5)
    settings = MetricsConfig(
        lmc_points=3, cka_samples=40, eval_batch_size=60, options={"lmc_measure": "loss", "cka_hidden": True}
    )
    a, b = copy.deepcopy(model), copy.deepcopy(flipped)
    result = pair_metrics(a, b, model.state_dict(), flipped.state_dict(), data, settings, Performance())
    assert result["cka_hidden"] == pytest.approx(1.0, abs=1e-6)
    midpoint = copy.deepcopy(model)
    with torch.no_grad():
        for linear in _flipped_linears(midpoint):
            linear.weight.zero_()
    end, _ = evaluate(model, data.eval_batches("train", 60))
    middle, _ = evaluate(midpoint, data.eval_batches("train", 60))
    assert result["lmc_train_loss"][1] == pytest.approx(middle, rel=1e-5)
    assert result["barrier"] == pytest.approx(middle - end, rel=1e-4, abs=1e-5)
    assert result["mc"] == pytest.approx(end - middle, rel=1e-4, abs=1e-5) and result["mc_t"] == 0.5
    assert result["barrier"] > 0.05  # the trained blocks matter: the bare embedding is worse
    error = pair_metrics(
        copy.deepcopy(model), copy.deepcopy(flipped), model.state_dict(), flipped.state_dict(), data,
        MetricsConfig(lmc_points=3, cka_samples=40, eval_batch_size=60), Performance(),
    )  # fmt: skip
    rise = error["lmc_train_error"][1] - error["lmc_train_error"][0]  # the ends are one function
    assert error["lmc_train_loss"] == pytest.approx(result["lmc_train_loss"], rel=1e-9)
    assert error["barrier"] == pytest.approx(max(0.0, rise), abs=1e-12)  # the paper's: the error curve


def test_hessian_of_a_transformer_through_the_existing_code(trained):
    from threeregime.compute.hessian import HessianOperator, HessianSettings, hessian_summary

    model, data = trained
    x, y = data.train_x[:4], data.train_y[:4]
    settings = HessianSettings(max_iter=30, tol=1e-6, probes=4, probe_batch=2, deflation=3)
    summary = hessian_summary(model, x, y, None, settings)
    op = HessianOperator(model, x, y)
    generator = torch.Generator().manual_seed(3)
    v = op.random(generator)
    hv = op.hvp(v)
    rayleigh = float(sum((a * b).sum() for a, b in zip(v, hv)) / sum((a * a).sum() for a in v))
    assert math.isfinite(summary["hessian_trace"]) and summary["hessian_samples"] == 4
    # the dominant eigenvalue (largest in magnitude) bounds every Rayleigh quotient
    assert abs(rayleigh) <= abs(summary["hessian_top_eigenvalue"]) * 1.01


# ----------------------------------------------------------------------------- the overlay, end to end
@pytest.mark.slow
def test_a_tiny_lm_overlay_through_the_workflow(tmp_path):
    """presets/overlays/lm-cpu.yaml over config.yaml, made tiny: the real jobs, in minutes."""
    _needs_transformers()
    tiny = {
        "run_name": "lm-tiny",
        "data": {"num_samples": 200, "context_length": 16},
        "model": {"width": 0.5},
        "train": {"epochs": 2},
        "knob": {"values": [2880, 5760]},
        "prune": {"calibration_samples": 8, "densities": [0.5]},
        "retrain": {"recipe": {"epochs": 1}},
        "metrics": {"cka_samples": 20, "hessian_samples": 4, "hessian_max_iter": 4, "hessian_probes": 2,
                    "hessian_probe_batch": 2, "hessian_trace_deflation": 2, "lmc_points": 3},
    }  # fmt: skip
    raw = merge_configs(read_config_file(REPO / "config.yaml"), read_config_file(OVERLAY), tiny)
    write_config(tmp_path, raw)
    snakemake(tmp_path, "--cores", "1")
    results = tmp_path / "results" / "lm-tiny"
    models = pd.read_csv(results / "models.csv")
    assert len(models) == 2 * 2 and set(models["temperature"]) == {2880, 5760}
    assert (models["perplexity"] - models["test_loss"].map(math.exp)).abs().max() < 1e-9
    assert models["weight_alpha"].notna().all() and models["hessian_top_eigenvalue"].notna().all()
    assert (models["density_actual"] == 0.5).all() and (models["density_retrained"] == 0.5).all()
    metrics = pd.read_csv(results / "metrics.csv")
    assert metrics["cka_hidden"].between(0, 1 + 1e-9).all()
    for path in (results / "metrics").rglob("*.json"):
        record = json.loads(path.read_text())
        from threeregime.compute.landscape import barrier_height, mode_connectivity

        assert record["mc"] == pytest.approx(mode_connectivity(record["lmc_train_loss"])[0], abs=1e-12)
        assert record["barrier"] == pytest.approx(barrier_height(record["lmc_train_loss"], record["lmc_t"]))
        assert record["chance_error"] == pytest.approx(255 / 256)
    regimes = pd.read_csv(results / "regimes.csv")
    assert len(regimes) == 2 and set(regimes["regime"]) <= {"I", "II-A", "II-B"}
    assert {"perplexity_mean", "cka_hidden_mean", "test_loss_mean"} <= set(regimes)
    assert (results / "phase_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (results / "logs" / "dense" / "tokens-5760" / "seed1.log").read_text()
    assert "epochs 1->2 of 2" in log  # continues the 2,880-token checkpoint


@pytest.mark.slow
def test_the_gpu_overlay_plans_its_grid_and_counts_whole_epochs_of_tokens(tmp_path):
    """lm-gpu.yaml after lm-cpu.yaml: 5 token checkpoints x 6 densities, 2 dense seeds, one
    retrain pair (LLaMA layers are not packed: one retrain job per retraining), each knob value a
    whole epoch of the 128-byte windows (111 steps of 64 per epoch)."""
    from collections import Counter

    from .test_incremental import plan

    overlays = REPO / "presets" / "overlays"
    raw = merge_configs(
        *(read_config_file(f) for f in (REPO / "config.yaml", OVERLAY, overlays / "lm-gpu.yaml"))
    )
    cfg = load_config(raw)
    assert cfg.model.name == "llama_medium" and cfg.runtime.device == "cuda"
    per_epoch = 111 * 64 * 128
    assert [int(v) for v in cfg.knob.values] == [e * per_epoch for e in (2, 5, 10, 20, 40)]
    write_config(tmp_path, raw)
    jobs = Counter(rule for rule, _ in plan(tmp_path))
    fixed = {"prepare_data": 1, "collect": 1, "classify": 1, "plot": 1}
    assert jobs == Counter(fixed | {"dense_train": 10, "prune": 60, "retrain": 120, "metrics": 60})
