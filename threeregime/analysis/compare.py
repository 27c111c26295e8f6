"""Several runs' regime maps under one rule, and where they differ.

Each run draws its own boundaries: its eps comes from its own noise, its CKA cut from its own
connected cells. Two runs that differ in one thing (the pruning method, say) can then label a
cell differently only because each drew its line elsewhere. Here the runs are classified as one:

* **Shared thresholds.** The runs' cells (their per-pair observations, metrics.csv, averaged per
  cell) are pooled: eps by the noise rule of ``regimes.eps_mode`` over every cell of every run,
  then the CKA cut by the rule of ``regimes.cka_cut_mode`` over every connected cell of every
  run (threeregime.analysis.regimes.choose_thresholds on the pooled cells). Collapsed cells take
  no part, as in one run.
* **Labels.** Every cell of every run re-labelled under those two thresholds (``regime``), next
  to the label of the run's own classification (``own_regime``, from its regimes.csv, where
  given).
* **Differences.** For every cell two runs share, in every pair of runs: whether the labels
  differ and ``p_differ``, the share of draws in which they differ. The draws are those of the
  uncertainty model (``regimes.uncertainty``, threeregime.analysis.uncertainty) applied to the
  pooled observations with the run as part of each cell's key: each draw draws every cell of
  every run, derives eps and the CKA cut from all of them together, as the point estimate does,
  and labels every cell. For two labels that differ, ``p_differ`` is the probability that the
  difference is real; for two that agree, ``1 - p_differ`` the probability that they really
  agree.

Assumptions, beyond the uncertainty model's: the pooled model treats cells of different runs as
independent given the noise. Runs pruned from the same dense models (the setups of
``prune.setups``) share each dense seed's draw, which moves their cells together; ignoring that
makes ``p_differ`` conservative for a difference (it sees more noise in the difference than
there is) and lowers the probability of agreement near a threshold. (The bootstrap,
``regimes.uncertainty: bootstrap``, draws dense seeds once for every run, so runs with the same
dense seed numbers move together there.)
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from threeregime.analysis.cells import CELL, collapsed_cells
from threeregime.analysis.confidence import CONFIDENT, P_COLUMNS, confidence_level
from threeregime.analysis.regimes import COLLAPSED, REGIMES, Thresholds, choose_thresholds, classify
from threeregime.analysis.uncertainty import SEED, Draws, uncertainty_draws
from threeregime.config.settings import ConfigError, RegimeConfig, fmt_value

RUN = "run"
KEYS = [RUN, *CELL]  # a cell of one run among several


class IncomparableRuns(ConfigError):
    """Runs whose maps cannot be compared (different knobs, no cell in common): one line."""


@dataclass(frozen=True)
class RunTables:
    """One run's tables as a comparison reads them: ``observations`` (metrics.csv: one row per
    retrain pair), ``cells`` (cells.csv), ``regimes`` (regimes.csv: its own labels; optional)
    and ``description`` (run, setup, knob, model, data, method: threeregime.config.experiment
    .ExperimentConfig.description)."""

    name: str
    observations: pd.DataFrame
    cells: pd.DataFrame
    description: dict = field(default_factory=dict)
    regimes: pd.DataFrame | None = None

    @property
    def knobs(self) -> list[str]:
        return sorted(set(self.cells["knob"]))

    def grid(self) -> set[tuple[float, float]]:
        """The run's (temperature, density) cells."""
        return set(zip(self.cells["temperature"].astype(float), self.cells["density"].astype(float)))

    def grid_text(self) -> str:
        """'epochs 2, 5 x density 0.1, 0.2': the run's grid in words."""
        temps = ", ".join(fmt_value(t) for t in sorted(set(self.cells["temperature"])))
        dens = ", ".join(fmt_value(d) for d in sorted(set(self.cells["density"])))
        return f"{'/'.join(self.knobs)} {temps} x density {dens}"


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` finds: the shared ``thresholds``, every run's ``labels`` (one row
    per run and cell), the ``differences`` (one row per pair of runs and cell they share), the
    ``draws`` behind the probabilities (None under ``regimes.uncertainty: none``) and a
    ``summary``."""

    names: tuple[str, ...]
    descriptions: tuple[dict, ...]
    thresholds: Thresholds
    labels: pd.DataFrame
    differences: pd.DataFrame
    draws: Draws | None
    summary: dict
    cka_metric: str = "cka_softmax"

    @property
    def reference(self) -> str:
        """The first run: the one the difference map compares every other run with."""
        return self.names[0]


def check_comparable(runs: list[RunTables]) -> None:
    """Raise :class:`IncomparableRuns` (one line) unless the runs can be compared: two or more,
    distinct names, one knob each and the same knob, every run sharing a cell with the first."""
    if len(runs) < 2:
        raise IncomparableRuns(f"compare needs two runs or more, got {len(runs)}")
    names = [run.name for run in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise IncomparableRuns(f"{', '.join(twice)} given twice; name each run once")
    for run in runs:
        if len(run.knobs) != 1:
            raise IncomparableRuns(
                f"{run.name}: its cells sweep {len(run.knobs)} knobs ({run.knobs}); expected one"
            )
    reference = runs[0]
    for run in runs[1:]:
        if run.knobs != reference.knobs:
            raise IncomparableRuns(
                f"{reference.name} sweeps the {reference.knobs[0]} knob and {run.name} the "
                f"{run.knobs[0]} knob: their cells are not the same cells, so their maps cannot be compared"
            )
        if not reference.grid() & run.grid():
            raise IncomparableRuns(
                f"{run.name} shares no (temperature, density) cell with {reference.name}: "
                f"{reference.name} has {reference.grid_text()}, {run.name} has {run.grid_text()}"
            )


def pooled_cells(runs: list[RunTables]) -> pd.DataFrame:
    """Every run's cells in one table, with a run column (collapsed cells flagged)."""
    tables = []
    for run in runs:
        cells = run.cells.copy()
        cells["collapsed"] = collapsed_cells(cells).to_numpy()
        tables.append(cells.assign(**{RUN: run.name}))
    return pd.concat(tables, ignore_index=True)


def shared_thresholds(runs: list[RunTables], cfg: RegimeConfig) -> Thresholds:
    """eps and the CKA cut by the config's rules over the pooled cells of every run (module
    docstring); collapsed cells take no part."""
    cells = pooled_cells(runs)
    measured = cells[~cells["collapsed"]]
    if measured.empty:
        raise IncomparableRuns(
            f"every cell of {', '.join(r.name for r in runs)} collapsed: nothing to classify"
        )
    return choose_thresholds(measured.reset_index(drop=True), cfg)


def joint_draws(runs: list[RunTables], cfg: RegimeConfig) -> Draws | None:
    """Draws of the uncertainty model over every run's cells at once (the run part of each cell's
    key), collapsed cells left out; None under ``regimes.uncertainty: none``."""
    collapsed = pooled_cells(runs)
    collapsed = collapsed.loc[collapsed["collapsed"], KEYS]
    observations = pd.concat([run.observations.assign(**{RUN: run.name}) for run in runs], ignore_index=True)
    if len(collapsed):
        keys = pd.MultiIndex.from_frame(observations[KEYS])
        observations = observations[~keys.isin(pd.MultiIndex.from_frame(collapsed))]
    if observations.empty:
        return None
    return uncertainty_draws(observations.reset_index(drop=True), cfg, keys=KEYS)


def _draw_index(draws: Draws | None) -> dict[tuple, int]:
    if draws is None:
        return {}
    cells = draws.cells.reset_index(drop=True)
    return {
        (run, float(t), float(d)): i
        for i, (run, t, d) in enumerate(zip(cells[RUN], cells["temperature"], cells["density"]))
    }


def relabel(
    runs: list[RunTables], thresholds: Thresholds, cka_metric: str, draws: Draws | None
) -> pd.DataFrame:
    """One row per run and cell: its label under the shared thresholds, the label of the run's
    own classification, and the probability of each regime from the joint draws."""
    cells = pooled_cells(runs)
    regime = classify(cells, thresholds.eps, thresholds.cka_cut, cka_metric)
    cells["regime"] = regime.where(~cells["collapsed"], COLLAPSED)
    columns = [RUN, *CELL, "regime", "collapsed", "n", "mc_mean", f"{cka_metric}_mean"]
    columns += [c for c in ("test_error_mean", "density_actual_mean") if c in cells]
    labels = cells[columns].copy()
    own = []
    for run in runs:
        if run.regimes is None or "regime" not in run.regimes:
            own.append(pd.Series([None] * len(run.cells)))
            continue
        keyed = run.regimes.set_index(["temperature", "density"])["regime"]
        own.append(
            pd.Series(keyed.reindex(list(zip(run.cells["temperature"], run.cells["density"]))).to_numpy())
        )
    labels.insert(labels.columns.get_loc("regime") + 1, "own_regime", pd.concat(own, ignore_index=True))
    index = _draw_index(draws)
    shares = draws.probabilities() if draws is not None else None
    rows = [
        index.get((r, float(t), float(d)))
        for r, t, d in zip(labels[RUN], labels["temperature"], labels["density"])
    ]
    for j, name in enumerate(REGIMES):
        labels[P_COLUMNS[name]] = [np.nan if i is None or shares is None else shares[i, j] for i in rows]
    p = labels[list(P_COLUMNS.values())].to_numpy(float)
    own_column = [list(P_COLUMNS).index(r) if r in P_COLUMNS else -1 for r in labels["regime"]]
    labels["p_label"] = [p[i, k] if k >= 0 else np.nan for i, k in enumerate(own_column)]
    labels["confidence"] = [
        COLLAPSED if r == COLLAPSED else confidence_level(v)
        for r, v in zip(labels["regime"], labels["p_label"])
    ]
    return labels


def differences(labels: pd.DataFrame, names: list[str], cka_metric: str, draws: Draws | None) -> pd.DataFrame:
    """One row per pair of runs (in the order given) and cell both have: both labels, whether
    they differ, ``change`` ('I -> II-A'), ``p_differ`` (share of draws in which they differ;
    empty where a cell collapsed or the model has no estimate) and ``confidence`` (of the
    difference where the labels differ, of the agreement where they agree)."""
    index = _draw_index(draws)
    keyed = labels.set_index([RUN, "temperature", "density"])
    shown = ["regime", "mc_mean", f"{cka_metric}_mean"] + [c for c in ("test_error_mean",) if c in labels]
    rows = []
    for a, b in itertools.combinations(names, 2):
        cells_a = keyed.loc[a]
        cells_b = keyed.loc[b]
        for temperature, density in sorted(set(cells_a.index) & set(cells_b.index)):
            row_a, row_b = cells_a.loc[(temperature, density)], cells_b.loc[(temperature, density)]
            differ = row_a["regime"] != row_b["regime"]
            ia = index.get((a, float(temperature), float(density)))
            ib = index.get((b, float(temperature), float(density)))
            p = np.nan
            if (
                draws is not None
                and ia is not None
                and ib is not None
                and draws.measured[ia]
                and draws.measured[ib]
            ):
                p = float((draws.labels[:, ia] != draws.labels[:, ib]).mean())
            row = {
                "knob": row_a["knob"],
                "temperature": temperature,
                "density": density,
                "run_a": a,
                "run_b": b,
                "regime_a": row_a["regime"],
                "regime_b": row_b["regime"],
                "differs": bool(differ),
                "change": f"{row_a['regime']} -> {row_b['regime']}" if differ else "",
                "p_differ": p,
                "confidence": confidence_level(p if differ else 1 - p),
            }
            for column in shown[1:]:
                stem = column.removesuffix("_mean")
                row[f"{stem}_a"], row[f"{stem}_b"] = float(row_a[column]), float(row_b[column])
            rows.append(row)
    return pd.DataFrame(rows)


def compare_runs(runs: list[RunTables], cfg: RegimeConfig) -> Comparison:
    """Shared thresholds, every run's labels under them and every difference between two runs
    with its probability (module docstring). Raises :class:`IncomparableRuns` first."""
    check_comparable(runs)
    thresholds = shared_thresholds(runs, cfg)
    draws = joint_draws(runs, cfg)
    labels = relabel(runs, thresholds, cfg.cka_metric, draws)
    names = [run.name for run in runs]
    diff = differences(labels, names, cfg.cka_metric, draws)
    summary = comparison_summary(runs, thresholds, labels, diff, draws, cfg)
    return Comparison(
        tuple(names),
        tuple(r.description for r in runs),
        thresholds,
        labels,
        diff,
        draws,
        summary,
        cfg.cka_metric,
    )


def comparison_summary(
    runs: list[RunTables], thresholds: Thresholds, labels: pd.DataFrame, diff: pd.DataFrame,
    draws: Draws | None, cfg: RegimeConfig,
) -> dict:  # fmt: skip
    """The thresholds and where they came from, how the probabilities were made, per run the
    cells relabelled by the shared thresholds, and per pair the cells that differ (with p >=
    CONFIDENT and below)."""
    pairs = []
    if len(diff):
        for (a, b), rows in diff.groupby(["run_a", "run_b"], sort=False):
            differ = rows[rows["differs"]]
            agree = rows[~rows["differs"]]
            pairs.append(
                {
                    "run_a": a,
                    "run_b": b,
                    "common_cells": len(rows),
                    "differing": len(differ),
                    "differing_confident": int((differ["p_differ"] >= CONFIDENT).sum()),
                    "agreeing_confident": int((1 - agree["p_differ"] >= CONFIDENT).sum()),
                    "changes": {k: int(v) for k, v in differ["change"].value_counts().sort_index().items()},
                }
            )
    relabelled = {}
    for run in runs:
        own = labels[labels[RUN] == run.name]
        known = own["own_regime"].notna()
        relabelled[run.name] = (
            int((own.loc[known, "regime"] != own.loc[known, "own_regime"]).sum()) if known.any() else None
        )
    return {
        "runs": [
            {"name": r.name, "cells": len(r.cells), "grid": r.grid_text()} | r.description for r in runs
        ],
        "reference": runs[0].name,
        "thresholds": asdict(thresholds),
        "cka_metric": cfg.cka_metric,
        "regimes": asdict(cfg),
        "uncertainty": {
            "method": draws.method if draws is not None else "none",
            "draws": int(len(draws.eps)) if draws is not None else 0,
            "seed": SEED,
            "units": draws.units if draws is not None else None,
        },
        "relabelled_by_shared_thresholds": relabelled,
        "pairs": pairs,
        "confident_at": CONFIDENT,
    }
