"""End to end: a tiny config through the real Snakemake workflow (CLI), outputs and their columns."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from .conftest import snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from .conftest import TINY_CONFIG

    folder = tmp_path_factory.mktemp("tiny")
    config = json.loads(json.dumps(TINY_CONFIG))
    config["metrics"]["hessian_esd"] = True  # an optional metric, with its own figure
    write_config(folder, config)
    result = snakemake(folder)
    return folder, folder / "results" / "tiny", result


def test_outputs_and_columns(tiny_run):
    _, results, _ = tiny_run
    metrics = pd.read_csv(results / "metrics.csv")
    assert len(metrics) == 2 * 2 * 1  # temperatures x densities x retrain pairs
    for column in [
        "knob", "temperature", "density", "dense_seed", "seed_a", "seed_b", "mc", "mc_t",
        "cka_softmax", "cka_logits", "test_error", "train_loss", "train_error",
        "hessian_top_eigenvalue", "hessian_trace", "density_actual",
    ]:  # fmt: skip
        assert column in metrics, column
    assert metrics[["mc", "cka_softmax", "test_error", "hessian_trace"]].notna().all().all()
    assert ((metrics["cka_softmax"] > 0) & (metrics["cka_softmax"] <= 1 + 1e-9)).all()
    assert (metrics["mc"] <= 0.5).all() and (metrics["test_error"].between(0, 1)).all()
    assert set(metrics["density"]) == {0.2, 0.6} and set(metrics["temperature"]) == {1, 3}
    assert (abs(metrics["density_actual"] - metrics["density"]) < 0.02).all()
    assert (metrics["density_retrained"] == metrics["density_actual"]).all()  # the density audit
    cells = pd.read_csv(results / "cells.csv")
    assert (cells["density_retrained_mean"] == cells["density_actual_mean"]).all()
    assert not cells["collapsed"].any() and (cells["chance_error"] == 0.9).all()
    models = pd.read_csv(results / "models.csv")
    assert len(models) == 2 * 2 * 2 and set(models["retrain_seed"]) == {1, 2}
    regimes = pd.read_csv(results / "regimes.csv")
    assert set(regimes["regime"]) <= {"I", "II-A", "II-B"} and len(regimes) == 4
    assert {"eps", "cka_cut", "normalized_test_error", "mc_mean", "cka_softmax_mean"} <= set(regimes)
    summary = json.loads((results / "summary.json").read_text())
    assert sum(summary["regime_counts"].values()) == 4
    for name in ("phase_diagram.png", "phase_diagram.pdf", "regime_map.png", "regime_map.pdf"):
        assert (results / name).stat().st_size > 1000, name
    assert (results / "phase_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("robustness.csv", "advice.csv", "selection.csv"):
        assert len(pd.read_csv(results / name)) > 0, name


def test_the_hessian_density_flows_into_cells_and_its_figure(tiny_run):
    _, results, _ = tiny_run
    cells = pd.read_csv(results / "cells.csv")
    for _, cell in cells.iterrows():
        nodes = json.loads(cell["hessian_esd_nodes_mean"])
        weights = json.loads(cell["hessian_esd_weights_mean"])
        assert len(nodes) == len(weights) >= 2 * 4  # two models, >= 4 Lanczos steps each
        assert sum(weights) == pytest.approx(1.0, abs=1e-9)
        # the top eigenvalue is the largest in magnitude (it can be negative on this tiny model)
        assert max(nodes, key=abs) == pytest.approx(cell["hessian_top_eigenvalue_mean"], rel=0.5)
    assert (results / "hessian_esd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (results / "hessian_esd.pdf").stat().st_size > 1000


def test_every_job_logged_progress(tiny_run):
    _, results, _ = tiny_run
    retrain_logs = list((results / "logs" / "retrain").rglob("*.log"))
    assert len(retrain_logs) == 8
    text = retrain_logs[0].read_text()
    assert "epoch 1/3" in text and "epoch 3/3" in text and "done at epoch 3" in text
    dense_logs = sorted((results / "logs" / "dense").rglob("*.log"))
    assert "epochs 1->3" in dense_logs[-1].read_text() or "epochs 1->3" in dense_logs[0].read_text()


def test_second_run_has_nothing_to_do_and_dry_run_lists_plan(tiny_run, tmp_path):
    folder, _, _ = tiny_run
    again = snakemake(folder)
    assert "Nothing to be done" in again.stdout + again.stderr
    fresh = tmp_path / "fresh"
    from .conftest import TINY_CONFIG

    write_config(fresh, TINY_CONFIG)
    plan = snakemake(fresh, "-n")
    text = plan.stdout
    for rule, count in [("dense_train", 2), ("prune", 4), ("retrain", 8), ("metrics", 4), ("plot", 1)]:
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-800:])
    assert not (fresh / "results").exists(), "a dry run computes nothing"


def test_bad_config_fails_before_any_job(tmp_path):
    from .conftest import TINY_CONFIG

    config = json.loads(json.dumps(TINY_CONFIG))
    config["prune"]["densities"] = [0.2, 1.5]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "prune.densities[1]: 1.5 is greater than the maximum of 1" in output
    assert not (tmp_path / "results").exists()


def test_regime_analysis_and_html_report(tiny_run):
    """Real output: advice per density, selection, HTML tables, and `snakemake --report`."""
    folder, results, _ = tiny_run
    cells = pd.read_csv(results / "cells.csv")
    advice = pd.read_csv(results / "advice.csv")
    assert sorted(advice["density"]) == [0.2, 0.6]
    assert set(advice["advice"]) <= {"raise", "lower", "keep"}
    assert (advice["reference_temperature"] == 3).all()  # train.epochs = 3 is on the grid
    for _, row in advice.iterrows():
        column = cells[cells["density"] == row["density"]]
        assert row["best_temperature"] == column.loc[column["test_error_mean"].idxmin(), "temperature"]
    assert len(pd.read_csv(results / "advice_cells.csv")) == 4
    selection = pd.read_csv(results / "selection.csv")
    assert selection["rule_rank"].between(1, 2).all() and len(selection) == 2
    summary = json.loads((results / "summary.json").read_text())
    assert summary["thresholds"]["eps_measured"] is None  # one retrain pair: no replicates
    regimes = pd.read_csv(results / "regimes.csv")  # ... and so no bootstrap confidence either
    assert (regimes["confidence"] == "unmeasured").all() and regimes["p_label"].isna().all()
    assert summary["confidence"]["levels"] == {"unmeasured": 4}
    assert summary["advice"]["per_density"]["total"] == 2
    for name in ("regimes", "advice", "advice_cells", "selection", "robustness", "summary"):
        assert "<table" in (results / "tables" / f"{name}.html").read_text(), name
    report = folder / "results" / "report.html"
    snakemake(folder, "--report", str(report))
    text = report.read_text()
    for needle in ("1. Figures", "3. Advice and model selection", "phase_diagram.png", "regime_map.png",
                   "advice.html", "selection.html", "robustness.html", "Three-regime model"):  # fmt: skip
        assert needle in text, needle


def test_a_run_from_another_folder_uses_the_workflow_profile(tiny_run, tmp_path):
    """`snakemake -s <repo>/workflow/Snakefile -d DIR` from elsewhere, without --cores: the
    workflow profile (cores, rerun-incomplete) is found beside the Snakefile."""
    import subprocess
    import sys

    from .conftest import SNAKEFILE

    folder, _, _ = tiny_run
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert f"workflow specific profile {SNAKEFILE.parent / 'profiles' / 'default'}" in output, output
    assert "Nothing to be done" in output


def test_results_that_mix_numeric_environments_are_named_on_the_console(tiny_run):
    """One metrics job recomputed under 2 threads: the run ends with a warning on the console
    (not only in collect's log). Last in this module: it changes the run's tables."""
    folder, results, _ = tiny_run
    (results / "metrics" / "epochs-3" / "density-0.6" / "seed1" / "pair1-2.json").unlink()
    write_config(folder, {"runtime": {"threads": 2}}, "threads.yaml")
    result = snakemake(folder, "--configfile", str(folder / "threads.yaml"))
    console = result.stdout + result.stderr
    assert "results/tiny mixes 2 numeric environments (threads, device or library versions" in console
    assert "2 threads" in console and "1 thread," in console
