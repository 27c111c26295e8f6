"""Files a user may receive from elsewhere (datasets, models, resume files, CIFAR batches, results)
are data: reading one never runs what it contains, and a file that is not what it should be is
one line naming it."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from threeregime.cli import main
from threeregime.compute.checkpoints import CONTENTS, load
from threeregime.compute.data import DataError, load_cifar
from threeregime.config.settings import ModelConfig, Recipe
from threeregime.config.specs import to_json
from threeregime.io.files import CheckpointError, load_checkpoint, save_checkpoint

NOT_OURS = "not a threeregime checkpoint: it holds Python objects other than tensors and plain data"


class Payload:
    """What an attacker pickles: unpickling it calls os.system, which creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, container: str) -> None:
    """A malicious file where a checkpoint goes: torch's zip format, or a bare pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "threeregime-checkpoint", "version": 2, "kind": "dense", "x": Payload(marker)}
    if container == "torch zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.pt"
    spec = {"name": "mnist1d", "num_samples": 600, "generation_seed": 3}
    assert main(["prepare-data", "--spec", to_json(spec), "--out", str(path)]) == 0
    return path


def _dense_spec(epochs: int = 1) -> str:
    recipe = Recipe(epochs=epochs, batch_size=32, lr=0.05).__dict__ | {"lr_milestones": [0.5, 0.75]}
    spec = {"model": ModelConfig(width=0.25).__dict__, "recipe": recipe, "seed": 3, "stop_epoch": None}
    return to_json(spec | {"performance": {"amp": "none", "channels_last": False}})


@pytest.fixture(scope="module")
def dense(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dense") / "model.pt"
    assert main(["dense", "--spec", _dense_spec(), "--data", str(dataset), "--out", str(out)]) == 0
    return out


def _jobs(dataset: Path, dense: Path, planted: Path, out: Path) -> dict[str, list[str]]:
    """The job that reads ``planted`` in each role: as the dataset, the dense model, a retrained
    model (a metrics job) and the previous level of an iterative chain."""
    prune = ["prune", "--spec", to_json({"method": "uniform", "density": 0.5}), "--out", str(out)]
    pair = ["--label", "knob=epochs", "--label", "seed_a=1", "--label", "seed_b=2"]
    return {
        "dataset": ["dense", "--spec", _dense_spec(), "--data", str(planted), "--out", str(out)],
        "dense model": [*prune, "--dense", str(planted)],
        "retrained model": [
            "metrics",
            "--spec",
            "{}",
            "--data",
            str(dataset),
            "--a",
            str(planted),
            "--b",
            str(planted),
            *pair,
            "--out",
            str(out),
        ],  # fmt: skip
        "previous level": [*prune, "--dense", str(dense), str(planted)],
    }


@pytest.mark.parametrize("container", ["torch zip", "bare pickle"])
@pytest.mark.parametrize("role", ["dataset", "dense model", "retrained model", "previous level"])
def test_a_malicious_checkpoint_never_runs(dataset, dense, tmp_path, capsys, role, container):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted" / "model.pt"
    plant(planted, marker, container)
    out = tmp_path / "out" / "result"
    code = main(_jobs(dataset, dense, planted, out)[role])
    err = capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert code == 1 and err.count("\n") == 1, err
    assert f"error: {planted}: {NOT_OURS}" in err and "delete it and run snakemake again" in err
    assert not out.exists()


@pytest.mark.parametrize("container", ["torch zip", "bare pickle"])
def test_a_malicious_resume_file_never_runs_and_the_job_starts_over(dataset, tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    out = tmp_path / "model.pt"
    plant(Path(f"{out}.resume"), marker, container)
    assert main(["dense", "--spec", _dense_spec(), "--data", str(dataset), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert not marker.exists(), "the payload ran"
    assert f"{out}.resume: {NOT_OURS}" in log and "starting over" in log
    assert load(out, "dense")["state"]["epoch"] == 1


def test_a_malicious_cifar_batch_never_runs(tmp_path):
    from .test_cifar import write_fake_cifar

    root = write_fake_cifar(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=2))
    from threeregime.config.settings import DataConfig

    with pytest.raises(DataError, match=r"data_batch_3: malformed CIFAR batch \(UnpicklingError: refused "):
        load_cifar(DataConfig(name="cifar10", root=str(root)))
    assert not marker.exists(), "the payload ran"


def test_checkpoints_of_an_older_threeregime_are_refused_with_the_way_to_regenerate(tmp_path):
    # threeregime before 0.2 pickled the torch version object inside every model's environments
    old = tmp_path / "old.pt"
    torch.save({"kind": "dense", "environments": [{"torch": torch.__version__}]}, old)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(old, "dense")
    assert str(info.value) == (
        f"{old}: {NOT_OURS}, which are refused unread because loading them could run code (a file "
        "of another program, or one written by threeregime before 0.2); if threeregime wrote it, "
        "delete it and run snakemake again (it rebuilds the file and what was computed from it)"
    )
    plain = tmp_path / "plain.pt"  # an old dataset: plain data, but no format tag
    torch.save({"kind": "dataset", "train_x": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=NOT_OURS):
        load_checkpoint(plain, "dataset")
    future = tmp_path / "future.pt"
    torch.save({"format": "threeregime-checkpoint", "version": 3, "kind": "dense"}, future)
    with pytest.raises(CheckpointError, match=r"format version 3, this threeregime reads version 2; delete"):
        load_checkpoint(future, "dense")


def test_what_threeregime_writes_loads_without_unpickling_objects(dataset, dense):
    """Everything a job writes reads back with torch's weights-only unpickler (tensors and plain
    data only); the environments record the torch version as a plain string."""
    for path, kind in ((dataset, "dataset"), (dense, "dense")):
        payload = torch.load(path, weights_only=True)
        assert payload["format"] == "threeregime-checkpoint" and payload["kind"] == kind
    assert type(load(dense, "dense")["environments"][0]["torch"]) is str


@pytest.mark.parametrize("kind", sorted(CONTENTS))
def test_a_checkpoint_of_the_right_kind_with_the_wrong_content_is_one_line(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(path, {"model": "not a state dict"}, kind)
    with pytest.raises(CheckpointError) as info:
        load(path, kind)
    missing = ", ".join(CONTENTS[kind])
    assert str(info.value).startswith(f"{path}: a '{kind}' checkpoint without a valid {missing}; delete it")


def test_weights_that_do_not_fit_the_recorded_architecture_are_one_line(dataset, dense, tmp_path, capsys):
    payload = load(dense, "dense")
    payload["model_cfg"] = {"name": "cnn1d", "width": 1.0}  # the weights are width 0.25's
    forged = tmp_path / "forged.pt"
    content = {k: v for k, v in payload.items() if k not in ("format", "version", "kind")}
    save_checkpoint(forged, content, "dense")
    spec = to_json({"method": "uniform", "density": 0.5})
    assert main(["prune", "--spec", spec, "--dense", str(forged), "--out", str(tmp_path / "p.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{forged}: its weights do not fit the architecture it records" in err


def test_a_metrics_file_with_a_non_numeric_value_is_one_line_naming_file_and_key(tmp_path, capsys):
    model = {"test_error": 0.1, "train_loss": 0.2, "train_error": 0.05, "hessian_trace": 3.0}
    record = {"knob": "epochs", "temperature": 3.0, "density": 0.2, "dense_seed": 1, "seed_a": 1}
    record |= {"seed_b": 2, "barrier": 0.0, "cka_softmax": 0.9, "cka_logits": 0.9, "mc": "oops"}
    record["models"] = [model | {"retrain_seed": 1}, model | {"retrain_seed": 2}]
    path = tmp_path / "t3" / "pair.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    grid = {"temperature": ["3"], "density": ["0.2"], "seed": ["1"], "pair": [[1, 2]]}
    outs = [str(tmp_path / f"{name}.csv") for name in ("models", "metrics", "cells")]
    args = ["collect", "--pattern", str(tmp_path / "t{temperature}" / "pair.json"), "--grid", to_json(grid)]
    code = main([*args, "--models-csv", outs[0], "--metrics", outs[1], "--cells", outs[2]])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"error: {path}: mc is 'oops', expected a number; delete it and run snakemake again" in err
    record["mc"], record["models"][1]["hessian_trace"] = -0.1, [1, 2]
    path.write_text(json.dumps(record))
    assert main([*args, "--models-csv", outs[0], "--metrics", outs[1], "--cells", outs[2]]) == 1
    assert f"{path}: models[1].hessian_trace is [1, 2], expected a number" in capsys.readouterr().err
    record["models"][1]["hessian_trace"] = None  # JSON null (and NaN) are numbers: not measured
    path.write_text(json.dumps(record))
    assert main([*args, "--models-csv", outs[0], "--metrics", outs[1], "--cells", outs[2]]) == 0
