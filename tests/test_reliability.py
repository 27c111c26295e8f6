"""Reliability: resume after SIGKILL, atomic outputs, corrupted inputs, determinism, bad runtime."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from threeregime.cli import main
from threeregime.compute.gpus import _CLAIMS, claim_gpu
from threeregime.compute.runtime import DeviceError, resolve_device
from threeregime.config.settings import ModelConfig, Recipe
from threeregime.config.specs import to_json
from threeregime.io.files import CheckpointError, load_checkpoint, save_checkpoint, write_json, write_text

from .conftest import REPO, TINY_CONFIG

DATA_SPEC = {"name": "mnist1d", "root": "data", "download": False, "num_samples": 2000}
DATA_SPEC |= {"generation_seed": 5, "augment": False}


def _dense_spec(epochs: int, lr: float = 0.05) -> str:
    recipe = Recipe(epochs=epochs, batch_size=32, lr=lr).__dict__ | {"lr_milestones": [0.5, 0.75]}
    spec = {"model": ModelConfig(width=0.25).__dict__, "recipe": recipe, "seed": 3, "stop_epoch": None}
    return to_json(spec | {"performance": {"amp": "none", "channels_last": False}})


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "threeregime", *args]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.pt"
    assert main(["prepare-data", "--spec", to_json(DATA_SPEC), "--out", str(path)]) == 0
    return path


def _dense_command(dataset: Path, out: Path, epochs: int) -> list[str]:
    return _cli("dense", "--spec", _dense_spec(epochs), "--data", str(dataset), "--out", str(out))


def test_sigkill_then_rerun_resumes_to_bit_identical_weights(dataset, tmp_path):
    epochs = 30
    env = os.environ | {"THREEREGIME_RUNTIME": to_json({"device": "cpu", "checkpoint_every": 2})}
    reference = tmp_path / "reference.pt"
    subprocess.run(_dense_command(dataset, reference, epochs), env=env, check=True, capture_output=True)

    out = tmp_path / "killed" / "model.pt"
    resume = Path(f"{out}.resume")
    process = subprocess.Popen(
        _dense_command(dataset, out, epochs), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 60
    while not resume.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random(7).uniform(0.1, 0.8))  # somewhere mid-run, maybe mid-write
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists(), "a killed job must not leave its output"
    killed_at = load_checkpoint(resume, "resume")["states"][0]["epoch"]
    assert 2 <= killed_at < epochs

    rerun = subprocess.run(
        _dense_command(dataset, out, epochs), env=env, capture_output=True, text=True, check=True
    )
    assert f"resuming from {resume} at epoch {killed_at}" in rerun.stdout
    assert not resume.exists(), "the resume file is removed once the output is complete"
    expected = load_checkpoint(reference, "dense")
    resumed = load_checkpoint(out, "dense")
    assert resumed["state"]["epoch"] == expected["state"]["epoch"] == epochs
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["state"]["history"] == [
        h | {"seconds": r["seconds"]}
        for h, r in zip(expected["state"]["history"], resumed["state"]["history"])
    ]


def test_resume_file_from_other_settings_is_ignored(dataset, tmp_path):
    out = tmp_path / "model.pt"
    env = os.environ | {"THREEREGIME_RUNTIME": to_json({"device": "cpu"})}
    first = _cli("dense", "--spec", _dense_spec(2), "--data", str(dataset), "--out", str(out))
    subprocess.run(first, env=env, check=True, capture_output=True)
    # plant a resume file written for another spec; the job must not continue from it
    planted = {"fingerprint": "other", "states": [{"epoch": 1}], "environment": {}}
    save_checkpoint(f"{out}.resume", planted, "resume")
    again = subprocess.run(first, env=env, check=True, capture_output=True, text=True)
    assert "ignoring" in again.stdout and "built from other settings" in again.stdout
    # a one-run resume file of an older version (a "state", not "states") is skipped too
    save_checkpoint(f"{out}.resume", {"fingerprint": "any", "state": {"epoch": 1}}, "resume")
    again = subprocess.run(first, env=env, check=True, capture_output=True, text=True)
    assert "a 'resume' checkpoint without a valid states, environment" in again.stdout
    assert "starting over" in again.stdout
    # and a truncated resume file is reported and skipped, not fatal
    Path(f"{out}.resume").write_bytes(b"PK\x03\x04 truncated")
    again = subprocess.run(first, env=env, check=True, capture_output=True, text=True)
    assert "corrupted or truncated checkpoint" in again.stdout and "starting over" in again.stdout


def test_truncated_checkpoint_input_is_a_clear_error(dataset, tmp_path, capsys):
    out = tmp_path / "dense.pt"
    assert main(["dense", "--spec", _dense_spec(1), "--data", str(dataset), "--out", str(out)]) == 0
    blob = out.read_bytes()
    out.write_bytes(blob[: len(blob) // 2])
    pruned = tmp_path / "pruned.pt"
    code = main(
        [
            "prune",
            "--spec",
            to_json({"method": "uniform", "density": 0.5}),
            "--dense",
            str(out),
            "--out",
            str(pruned),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and f"{out}: corrupted or truncated checkpoint" in err and "\n" == err[-1]
    assert err.count("\n") == 1, "one line"
    assert not pruned.exists()
    with pytest.raises(CheckpointError, match="expected a 'pruned' checkpoint, found 'dataset'"):
        load_checkpoint(dataset, "pruned")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt", "dense")


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"ok": 1})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", lambda self, text: (open(self, "w").write(text[:5]), explode()))
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"ok": 2, "long": "x" * 100})
    assert json.loads(target.read_text()) == {"ok": 1}, "the previous complete file is untouched"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temp file left behind"


def test_nonfinite_loss_fails_the_job_without_output(dataset, tmp_path):
    out = tmp_path / "dense.pt"
    env = os.environ | {"THREEREGIME_RUNTIME": to_json({"device": "cpu"})}
    command = _cli("dense", "--spec", _dense_spec(2, lr=1e8), "--data", str(dataset), "--out", str(out))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert (
        "error: dense seed=3: training loss is nan at epoch 1" in result.stderr or "is inf" in result.stderr
    )
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_cuda_requested_but_unavailable(dataset, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="threeregime"):
        assert resolve_device("cuda").type == "cpu"
    assert "cuda requested but unavailable; falling back to CPU" in caplog.text
    with pytest.raises(DeviceError, match="require_gpu is true"):
        resolve_device("cuda", require_gpu=True)
    out = tmp_path / "dense.pt"
    env = os.environ | {"THREEREGIME_RUNTIME": to_json({"device": "auto", "require_gpu": True})}
    command = _cli("dense", "--spec", _dense_spec(1), "--data", str(dataset), "--out", str(out))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "torch.cuda.is_available() is False" in result.stderr
    assert not out.exists()


def test_gpu_claims_spread_local_jobs_over_the_cards_and_end_with_the_process(tmp_path):
    """Locally Snakemake only caps how many GPU jobs run; each job picks its card by a file lock."""
    code = "import sys; from pathlib import Path; from threeregime.compute.gpus import claim_gpu; "
    code += "print(claim_gpu(3, Path(sys.argv[1])))"

    def another_job() -> str:
        command = [sys.executable, "-c", code, str(tmp_path)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    held = len(_CLAIMS)
    try:
        assert [claim_gpu(3, tmp_path) for _ in range(4)] == [0, 1, 2, 0]  # one each, then a second
        assert another_job() == "1"  # the next free (slot, card) while this process holds four
        assert another_job() == "1"  # that job has ended, and its claim with it
        _CLAIMS[held].close()  # a job on card 0 ends
        assert claim_gpu(3, tmp_path) == 0
        assert claim_gpu(1, tmp_path) == 0  # one visible card (e.g. under Slurm): nothing to choose
        # jobs end out of order: the next one goes to the card with the fewest, not the first slot
        two = tmp_path / "two"
        start = len(_CLAIMS)
        assert [claim_gpu(2, two) for _ in range(5)] == [0, 1, 0, 1, 0]
        _CLAIMS[start].close()  # card 0 keeps two jobs
        _CLAIMS[start + 3].close()  # card 1 keeps one
        assert claim_gpu(2, two) == 1
        blocked = tmp_path / "not-a-folder"
        blocked.write_text("")
        assert claim_gpu(2, blocked) == 0  # no lock folder: card 0, with a warning, not a failure
    finally:
        for handle in _CLAIMS[held:]:
            handle.close()
        del _CLAIMS[held:]


def _one_cell(dataset: Path, folder: Path) -> dict:
    """dense -> prune -> two retrainings -> metrics of one tiny cell, through the CLI commands."""
    from threeregime.config.load import load_config

    config = json.loads(json.dumps(TINY_CONFIG))
    cfg = load_config(config)
    dense, pruned = folder / "dense.pt", folder / "pruned.pt"
    assert (
        main(
            ["dense", "--spec", to_json(cfg.dense_spec("3", 1)), "--data", str(dataset), "--out", str(dense)]
        )
        == 0
    )
    assert (
        main(["prune", "--spec", to_json(cfg.prune_spec("0.2")), "--dense", str(dense), "--out", str(pruned)])
        == 0
    )
    for seed in (1, 2):
        spec = to_json(cfg.retrain_spec())
        out = folder / f"retrain{seed}.pt"
        assert (
            main(
                [
                    "retrain",
                    "--spec",
                    spec,
                    "--data",
                    str(dataset),
                    "--run",
                    str(pruned),
                    str(out),
                    str(seed),
                ]
            )
            == 0
        )
    labels = ["--label", "knob=epochs", "--label", "seed_a=1", "--label", "seed_b=2"]
    metrics = folder / "metrics.json"
    args = ["--data", str(dataset), "--a", str(folder / "retrain1.pt"), "--b", str(folder / "retrain2.pt")]
    assert (
        main(["metrics", "--spec", to_json(cfg.metrics_spec()), *args, *labels, "--out", str(metrics)]) == 0
    )
    result = json.loads(metrics.read_text())
    result.pop("seconds")
    return result


@pytest.fixture(scope="module")
def cell_metrics(dataset, tmp_path_factory) -> dict:
    """The metrics record of one tiny cell, computed once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("THREEREGIME_RUNTIME", to_json({"device": "cpu"}))
        return _one_cell(dataset, tmp_path_factory.mktemp("cell"))


def test_same_config_and_seeds_give_identical_metrics(dataset, cell_metrics, tmp_path, monkeypatch):
    monkeypatch.setenv("THREEREGIME_RUNTIME", to_json({"device": "cpu"}))
    second = _one_cell(dataset, tmp_path / "second")
    assert cell_metrics == second  # every number, bit for bit: mc, the LMC curve, CKA, errors, Hessian
    assert cell_metrics["lmc_train_error"] and cell_metrics["models"][0]["hessian_trace"] != 0


# ----------------------------------------------------------------------------- numeric environment
def test_every_result_records_its_numeric_environment(cell_metrics):
    (env,) = cell_metrics["environments"]  # dense, prune, retrain and metrics all ran alike
    assert env["device"] == "cpu" and env["threads"] == 1 and env["torch"] == torch.__version__
    assert env["amp"] == "none" and env["tf32"] is False and env["cpu"]


def _collect(folder: Path, records: dict[str, dict]) -> tuple[int, str]:
    """Write metrics files for temperatures ``records`` and run the collect command on them."""
    pattern = str(folder / "t{temperature}" / "d{density}" / "s{seed}" / "p{a}-{b}.json")
    for temperature, record in records.items():
        write_json(pattern.format(temperature=temperature, density="0.2", seed=1, a=1, b=2), record)
    grid = {"temperature": list(records), "density": ["0.2"], "seed": ["1"], "pair": [[1, 2]]}
    outs = {name: str(folder / f"{name}.csv") for name in ("models", "metrics", "cells")}
    args = ["collect", "--pattern", pattern, "--grid", to_json(grid), "--models-csv", outs["models"]]
    return main([*args, "--metrics", outs["metrics"], "--cells", outs["cells"]]), outs["cells"]


def test_collect_reports_tables_that_mix_numeric_environments(cell_metrics, tmp_path, capsys):
    import pandas as pd

    from threeregime.analysis.advice import analyse
    from threeregime.config.settings import RegimeConfig

    hot = cell_metrics | {"temperature": 3.0, "density": 0.2, "dense_seed": 1}
    cold = hot | {"temperature": 1.0}
    other = json.loads(json.dumps(cold))
    other["environments"][0]["threads"] = 2
    same = _collect(tmp_path / "same", {"3": hot, "1": cold})
    assert same[0] == 0
    summary = analyse(pd.read_csv(same[1]), RegimeConfig(eps_mode="fixed"))["summary"]
    assert summary["mixed_environments"] is False and len(summary["environments"]) == 1
    assert "1 thread, torch" in summary["environments"][0]
    capsys.readouterr()
    code, cells_csv = _collect(tmp_path / "mixed", {"3": hot, "1": other})
    assert code == 0 and "WARNING the table mixes 2 numeric environments" in capsys.readouterr().out
    cells = pd.read_csv(cells_csv)
    assert sorted(cells["environment"].str.contains("2 threads")) == [False, True]
    summary = analyse(cells, RegimeConfig(eps_mode="fixed"))["summary"]
    assert summary["mixed_environments"] is True and len(summary["environments"]) == 2


def test_collect_names_a_metrics_file_of_the_wrong_shape(cell_metrics, tmp_path, capsys):
    for broken in ({"models": 3}, [1, 2], cell_metrics | {"models": [{"test_error": 0.1}]}):
        code, _ = _collect(tmp_path, {"3": broken})
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1, err
        assert f"{tmp_path}/t3/d0.2/s1/p1-2.json: not a metrics file of this workflow" in err
        assert "delete it and run snakemake again" in err


def test_resume_under_another_numeric_environment_starts_over(dataset, tmp_path):
    """A run killed under 2 threads and resumed under 1 would mix both in one model."""
    from threeregime.compute.resume import fingerprint

    out = tmp_path / "model.pt"
    spec = _dense_spec(2)
    env = os.environ | {"THREEREGIME_RUNTIME": to_json({"device": "cpu"})}
    theirs = {"device": "cpu", "threads": 2, "torch": str(torch.__version__), "amp": "none"}
    theirs |= {"tf32": False, "channels_last": False, "compile": False}
    planted = {
        "fingerprint": fingerprint(spec, str(dataset)),
        "states": [{"epoch": 1}],
        "environment": theirs,
    }
    save_checkpoint(f"{out}.resume", planted, "resume")  # would crash if resumed: no weights in it
    command = _cli("dense", "--spec", spec, "--data", str(dataset), "--out", str(out), "--threads", "1")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NOT resuming" in result.stdout and "cpu" in result.stdout and "2 threads" in result.stdout
    assert load_checkpoint(out, "dense")["environments"][0]["threads"] == 1


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_get_the_permissions_the_umask_gives_a_new_file(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"ok": 1})
        save_checkpoint(tmp_path / "model.pt", {"x": 1}, "dense")
    finally:
        os.umask(previous)
    for name in ("metrics.json", "model.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    """A kill during classify left .advice.html.*.tmp behind; no later run removed it."""
    stale = tmp_path / ".advice.html.k2j3h4.tmp"
    stale.write_text("<html half")
    other = tmp_path / ".regimes.html.x.tmp"  # another output's temporary is not this write's
    other.write_text("")
    write_text(tmp_path / "advice.html", "<html></html>")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "advice.html").read_text() == "<html></html>"


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root, as on the CI machine)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_saying_so(full_disk, capsys):
    with pytest.raises(OSError, match="No space left on device"):
        write_json(full_disk / "big.json", {"x": "y" * 200_000})
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(full_disk / "big.pt", {"x": torch.zeros(100_000)}, "dense")
    out = full_disk / "dataset.pt"
    assert main(["prepare-data", "--spec", to_json(DATA_SPEC), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {out}: No space left on device" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in full_disk.iterdir()) == [], "no partial or temporary file left"


PRUNE = ["prune", "--dense", "dense.pt", "--out", "a.pt"]
METRICS = ["metrics", "--spec", "{}", "--data", "d.pt"]
DUPLICATE = json.dumps([{"a": "1", "b": "2", "out": "o.json", "labels": []}] * 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*PRUNE, "--spec", "[{}, {}]"], "one spec per distinct --out path, got 2"),
        ([*PRUNE, "a.pt", "--spec", "[{}]"], "got 1 for ['a.pt', 'a.pt']"),
        ([*PRUNE, "--spec", "{not json"], "prune --spec: not JSON"),
        ([*METRICS, "--pairs", "[1, 2]"], "expected a non-empty JSON list"),
        ([*METRICS, "--pairs", "[]"], "expected a non-empty JSON list"),
        ([*METRICS, "--a", "a.pt"], "give --a, --b and --out (one pair), or --pairs"),
        ([*METRICS, "--pairs", DUPLICATE], "two pairs write the same output"),
    ],
)
def test_a_packed_job_with_malformed_arguments_fails_in_one_line_before_any_compute(
    argv, message, tmp_path, capsys, monkeypatch
):
    """The packed prune and metrics commands (retrain_pack temperature) check their lists first."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing written, no lock left
