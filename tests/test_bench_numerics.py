"""The numerics comparison (benchmarks/bench_numerics.py) says AGREE only for differences within
the seed-to-seed noise, and DIFFER for a shift or a regime change beyond it."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_numerics import compare  # noqa: E402

CELLS = [(t, d) for t in (2.0, 5.0, 10.0) for d in (0.1, 0.4)]


def run(seed: int, mc_shift: float = 0.0, regime: dict | None = None) -> dict:
    """A synthetic run: 6 pairs and 6 models per cell, seed sd 0.01 on every metric."""
    rng = np.random.default_rng(seed)
    pairs, models, regimes = [], [], []
    for index, (t, d) in enumerate(CELLS):
        base = {"mc": -0.05 * index + mc_shift, "barrier": 0.01, "cka_softmax": 0.9, "cka_logits": 0.8}
        for _ in range(6):
            pairs.append(
                {"temperature": t, "density": d} | {k: v + rng.normal(0, 0.01) for k, v in base.items()}
            )
            model = {
                "test_error": 0.2,
                "train_error": 0.05,
                "hessian_top_eigenvalue": 10.0,
                "hessian_trace": 50.0,
            }
            models.append(
                {"temperature": t, "density": d} | {k: v + rng.normal(0, 0.01) for k, v in model.items()}
            )
        label = (regime or {}).get((t, d), "I" if index else "II-B")
        regimes.append({"temperature": t, "density": d, "regime": label, "n": 6, "mc_mean": base["mc"],
                        "mc_std": 0.01, "cka_softmax_mean": 0.9, "cka_softmax_std": 0.01})  # fmt: skip
    return {"pairs": pd.DataFrame(pairs), "models": pd.DataFrame(models), "regimes": pd.DataFrame(regimes),
            "eps": 0.02, "cka_cut": 0.8, "cka_metric": "cka_softmax"}  # fmt: skip


def test_same_distribution_agrees():
    result = compare(run(0), run(1), z_cell=4, z_bias=3)
    assert result["agree"], result["reasons"]
    assert result["changes"] == []
    mc = next(row for row in result["summary"] if row[0] == "mc")
    assert mc[1] == len(CELLS) and mc[4] < 4


def test_shift_of_a_few_seed_sds_differs():
    result = compare(run(0), run(1, mc_shift=0.03), z_cell=4, z_bias=3)
    assert not result["agree"]
    assert [r for r in result["reasons"] if r.startswith("mc:")]
    assert all(not r.startswith("test_error") for r in result["reasons"])
    effects = [row["effect"] for row in result["rows"] if row["metric"] == "mc"]
    assert min(effects) == pytest.approx(3.0, abs=1.5)


def test_regime_change_far_from_its_cut_differs():
    # cell (10, 0.4): mc -0.25 is 23 standard errors below -eps, so a change to II-B is real
    result = compare(run(0), run(0, regime={(10.0, 0.4): "II-B"}), z_cell=4, z_bias=3)
    assert not result["agree"]
    assert [c[:4] for c in result["changes"]] == [[10.0, 0.4, "I", "II-B"]]
    assert result["changes"][0][5] == "REAL"
