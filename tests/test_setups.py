"""The method axis (prune.setups): pruning setups that share a run's dense models. Each setup's
specs are those of a run with that prune section alone; its files carry the setup wildcard; the
run ends with their comparison under shared thresholds; adding a setup runs only its own jobs."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError

from .conftest import REPO, TINY_CONFIG, write_config
from .test_incremental import job, jobs_in, plan, run

TEMPS, SEED, PAIR = ["1", "3"], "1", ("1", "2")
BASE = copy.deepcopy(TINY_CONFIG)
BASE["prune"] = {"densities": [0.5], "setups": [{"name": "uniform"}, {"name": "global", "method": "global"}]}
ANALYSIS_RULES = ("collect", "classify", "plot")


def setup_jobs(setup: str, density: str = "0.5") -> set:
    """The prune, retrain and metrics jobs of one setup, and its analysis."""
    jobs = {job(rule, setup=setup) for rule in ANALYSIS_RULES}
    for t in TEMPS:
        cell = {"setup": setup, "temperature": t, "density": density, "seed": SEED}
        jobs |= {job("prune", **cell), job("metrics", **cell, a=PAIR[0], b=PAIR[1])}
        jobs |= {job("retrain", **cell, rseed=r) for r in PAIR}
    return jobs


# ----------------------------------------------------------------------------- config
def _with_setups(*setups, **prune) -> dict:
    raw = copy.deepcopy(TINY_CONFIG)
    raw["prune"] = {"densities": [0.2, 0.6], **prune, "setups": list(setups)}
    return raw


def test_a_setups_specs_are_those_of_a_run_with_its_prune_section_alone():
    setups = ({"name": "u"}, {"name": "a", "method": "alpha", "alpha_epsilon": 0.1, "densities": [0.6]})
    cfg = load_config(_with_setups(*setups))
    assert cfg.setup_names == ["u", "a"]
    alone = copy.deepcopy(TINY_CONFIG)
    alone["prune"] = {"method": "alpha", "alpha_epsilon": 0.1, "densities": [0.6]}
    alpha, standalone = cfg.for_setup("a"), load_config(alone)
    assert alpha.densities == ["0.6"] and alpha.setup == "a"
    assert alpha.prune_spec("0.6") == standalone.prune_spec("0.6")
    assert cfg.for_setup("u").prune_spec("0.2") == load_config(
        TINY_CONFIG | {"prune": {"densities": [0.2, 0.6]}}
    ).prune_spec("0.2")
    assert (
        alpha.retrain_spec() == standalone.retrain_spec()
        and alpha.metrics_spec() == standalone.metrics_spec()
    )
    assert alpha.description() == {"run": "tiny", "knob": "epochs", "model": "cnn1d", "data": "mnist1d",
                                   "method": "alpha", "setup": "a"}  # fmt: skip
    assert cfg.for_setup("u").description()["method"] == "uniform"


def test_a_config_without_setups_is_the_run_alone():
    cfg = load_config(TINY_CONFIG)
    assert cfg.setup_names == [] and cfg.setup_configs() == [cfg] and "setup" not in cfg.description()
    assert "setup" not in cfg.metrics_axes()


@pytest.mark.parametrize(
    "raw,message",
    [
        (
            _with_setups({"name": "a"}, {"name": "a", "method": "lamp"}),
            "prune.setups[1].name: 'a' names two setups",
        ),
        (
            _with_setups({"name": "n", "granularity": "2:4"}),
            "prune.setups[0] (n), from prune.densities: 0.2 is not 2:4's density",
        ),
        (
            _with_setups({"name": "n", "granularity": "2:4", "densities": [0.2]}),
            "prune.setups[0].densities: 0.2 is not 2:4's density",
        ),
        (_with_setups({"name": "a/b"}), "prune.setups[0].name: 'a/b' does not match"),
        (_with_setups({"name": "a", "schedule": "iterative"}), "prune.setups[0]: Additional properties"),
        (
            _with_setups({"name": "w", "method": "wanda", "densities": [0.05]}),
            "prune.setups[0].densities: density 0.05 keeps 0 of",
        ),
    ],
)
def test_setup_problems_are_one_line_naming_the_setup(raw, message):
    with pytest.raises(ConfigError) as caught:
        load_config(raw)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_retraining_packed_per_dense_model_needs_the_same_densities_in_every_setup():
    raw = _with_setups({"name": "u"}, {"name": "n", "granularity": "2:4", "densities": [0.5]})
    raw["runtime"] = {"retrain_pack": "temperature"}
    with pytest.raises(
        ConfigError, match=r"runtime.retrain_pack: .*\(u: 0.2, 0.6; n: 0.5\); use cell or none"
    ):
        load_config(raw)
    raw["prune"]["setups"][1] = {"name": "g", "method": "global"}  # the same densities: allowed
    assert load_config(raw).setup_names == ["u", "g"]


def test_adaptive_refinement_is_refused_with_setups():
    raw = _with_setups({"name": "u"}, {"name": "g", "method": "global"})
    raw["adaptive"] = {"enabled": True}
    with pytest.raises(ConfigError, match="adaptive.enabled: adaptive refinement plans one grid"):
        load_config(raw)


# ----------------------------------------------------------------------------- the DAG
def test_a_dry_run_plans_each_setups_jobs_over_one_set_of_dense_models(tmp_path):
    """uniform at the run's densities, a 2:4 setup at its own 0.5, a Wanda setup (whose prune
    jobs, alone, read the dataset); dense training once."""
    raw = copy.deepcopy(TINY_CONFIG)
    raw["prune"] = {
        "densities": [0.6],
        "setups": [
            {"name": "uniform"},
            {"name": "2of4", "granularity": "2:4", "densities": [0.5]},
            {"name": "wanda", "method": "wanda", "calibration_samples": 32},
        ],
    }
    write_config(tmp_path, raw)
    output = run(tmp_path, "-n", "-p")
    expected = {job("prepare_data"), job("compare_setups")} | {
        job("dense_train", temperature=t, seed=SEED) for t in TEMPS
    }
    expected |= setup_jobs("uniform", "0.6") | setup_jobs("2of4", "0.5") | setup_jobs("wanda", "0.6")
    assert jobs_in(output) == expected
    prunes = [line for line in output.splitlines() if "threeregime prune" in line]
    assert len(prunes) == 6
    for line in prunes:
        calibrates = "setup-wanda/" in line
        assert (" --data results/tiny/data/dataset.pt " in line) == calibrates, line
        if "setup-2of4/" in line:
            assert '"granularity":"2:4"' in line and '"density":0.5' in line
    assert not (tmp_path / "results").exists()


def test_a_config_without_setups_has_no_setup_in_any_path(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    output = run(tmp_path, "-n", "-p").replace(str(tmp_path), "")
    for marker in ("setup-", "setups/", "setup="):
        assert marker not in output
    assert all(rule != "compare_setups" for rule, _ in jobs_in(output))


def test_adding_a_setup_plans_only_its_own_jobs_and_the_comparison(tmp_path):
    """Without training anything: every output of the two-setup run is made (empty) and marked
    up to date in the DAG's order (snakemake --touch), then a third setup is added."""
    write_config(tmp_path, BASE)
    summary = run(tmp_path, "--summary")
    outputs = [line.split("\t")[0] for line in summary.splitlines() if line.startswith("results/")]
    assert len(outputs) > 40
    for name in outputs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    run(tmp_path, "--touch", "--cores", "1")
    assert plan(tmp_path) == set()
    overlay = copy.deepcopy(BASE)
    overlay["prune"]["setups"].append({"name": "lamp", "method": "lamp"})
    assert plan(tmp_path, overlay) == setup_jobs("lamp") | {job("compare_setups")}


# ----------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One real run of two setups (uniform, global) over one density."""
    folder = tmp_path_factory.mktemp("setups")
    write_config(folder, BASE)
    return folder, run(folder)


@pytest.mark.slow
def test_every_setup_is_pruned_retrained_measured_and_compared_from_one_dense_training(done):
    folder, output = done
    res = folder / "results" / "tiny"
    assert output.count("rule dense_train:") == 2  # one dense model per temperature, shared
    assert sorted(p.relative_to(res).as_posix() for p in res.glob("dense/*/*/model.pt")) == [
        "dense/epochs-1/seed1/model.pt", "dense/epochs-3/seed1/model.pt"
    ]  # fmt: skip
    for setup, method in (("uniform", "uniform"), ("global", "global")):
        tables = res / "setups" / setup
        metrics = pd.read_csv(tables / "metrics.csv")
        assert set(metrics["setup"]) == {setup} and len(metrics) == 2
        summary = json.loads((tables / "summary.json").read_text())
        assert summary["run"] == {"run": "tiny", "setup": setup, "knob": "epochs", "model": "cnn1d",
                                  "data": "mnist1d", "method": method}  # fmt: skip
        assert (tables / "regime_map.png").is_file() and (tables / "phase_diagram.pdf").is_file()
        pruned = res / f"pruned/setup-{setup}/epochs-3/density-0.5/seed1/model.pt"
        assert pruned.is_file()
    comparison = pd.read_csv(res / "setups/comparison.csv")
    assert set(zip(comparison["run_a"], comparison["run_b"])) == {("uniform", "global")}
    assert sorted(comparison["temperature"]) == [1, 3]
    # one dense seed and one retrain pair per cell: nothing to draw from, so no probability
    assert comparison["p_differ"].isna().all() and set(comparison["confidence"]) == {"unmeasured"}
    assert (res / "setups/comparison_maps.png").is_file() and (
        res / "setups/tables/comparison.html"
    ).is_file()


@pytest.mark.slow
def test_a_second_run_does_nothing(done):
    folder, _ = done
    assert "Nothing to be done" in run(folder)


@pytest.mark.slow
def test_adding_a_setup_runs_only_its_own_jobs_and_the_comparison(done):
    folder, _ = done
    overlay = copy.deepcopy(BASE)
    overlay["prune"]["setups"].append({"name": "lamp", "method": "lamp"})
    assert plan(folder, overlay) == setup_jobs("lamp") | {job("compare_setups")}


@pytest.mark.slow
def test_changing_one_setup_reruns_that_setup_alone(done):
    folder, _ = done
    overlay = copy.deepcopy(BASE)
    overlay["prune"]["setups"][1]["method"] = "lamp"  # the setup named global prunes by LAMP now
    assert plan(folder, overlay) == setup_jobs("global") | {job("compare_setups")}


@pytest.mark.slow
def test_a_plot_setting_redraws_every_setup_and_nothing_else(done):
    folder, _ = done
    assert plan(folder, {"plot": {"dpi": 80}}) == {job("plot", setup=s) for s in ("uniform", "global")}


@pytest.mark.slow
def test_the_status_command_reads_each_setup(done):
    import os
    import subprocess
    import sys

    folder, _ = done
    result = subprocess.run(
        [sys.executable, "-m", "threeregime", "status", "--out", str(folder / "status")],
        cwd=folder, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tiny / setup uniform: epochs (rows) x density (columns)" in result.stdout
    assert "tiny / setup global: epochs (rows) x density (columns)" in result.stdout
    assert "cells: # done 2" in result.stdout
    assert (folder / "status/setups/global/partial_regime_map.png").is_file()
