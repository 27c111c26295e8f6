"""How sure each regime label is, honest with few replicates: draws of the whole classification
from a noise model pooled across the grid, thresholds included.

A cell's label follows from its mean mc and CKA and from two thresholds derived from the whole
grid (eps from the measured noise, the CKA cut by Otsu's split of the connected cells). Both are
uncertain, and with two dense seeds per cell a cell's own spread says little about either. The
model (``regimes.uncertainty: pooled``):

* **Units.** A cell's observations are its retrain pairs. Pairs of one dense seed share the
  pruned model, so the independent units of a cell are its dense seeds: each unit is the mean of
  that dense seed's pairs. With a single dense seed in every cell the pairs are the units, and
  the noise of dense training goes unmeasured (the summary says so).
* **Noise, pooled across the grid.** How noisy a metric is depends on where the cell sits (a
  deep barrier varies from seed to seed far more than no barrier, a CKA of 0.9 more than one of
  0.9996), and is otherwise shared by the cells; the cell means are not. Each cell's unit
  variance s2 (d = units - 1 degrees of freedom) is shrunk towards a prior level s0^2 with d0
  prior degrees of freedom: (d0 s0^2 + d s2) / (d0 + d) (empirical Bayes: Smyth 2004, limma's
  moderated t). The prior level is a log-linear trend in the cell's distance from where the
  metric cannot vary (|mc| from 0, 1 - CKA from 1; limma-trend), fitted with d0 to every
  replicated cell's variance. Where the variances scatter around the trend no more than
  sampling explains (d0 infinite), every cell gets the trend's variance, known up to one factor
  with as many degrees of freedom as the grid has replicates (less the trend's two), and each
  draw draws that factor for all cells. A cell with a single unit gets the trend's level: its
  label has a probability whenever enough cells of the grid are replicated.
* **Draws.** Each draw takes every cell's noise from its posterior (scaled inverse chi-square),
  its mean from a normal around the observed mean with that noise (together: a t distribution;
  a drawn CKA above 1 is 1), derives eps as a run of the same design would estimate it (each
  replicated cell's sample spread drawn around its drawn noise, then the point rule) and the CKA
  cut from the drawn connected cells exactly as the point estimate does (a split over fewer
  than ``regimes.cka_split_min_cells`` cells falls back to ``regimes.cka_cut``), and labels
  every cell. ``p_label`` is the share of draws that give a cell its label: threshold instability, a
  split on a handful of cells, moves labels from draw to draw and lowers their probability.

Assumptions: units are normal around their cell's true mean; cells are independent given the
noise (cells pruned from one dense run share its seed, a correlation ignored here); the
probability is that of the label the rules give on the true (many-seed) means, in the runs'
numeric environment. Rounding differences of another machine grow into noise of the same kind
as seed noise; benchmarks/bench_calibration.py checks the probabilities against both.

``regimes.uncertainty: bootstrap`` keeps the earlier resampling of dense and retrain seeds (it
cannot see more noise than the few observations show, so it overstates confidence with two
dense seeds), and ``none`` computes no probabilities. Every method returns :class:`Draws`, which
threeregime.analysis.confidence turns into table columns and threeregime.analysis.boundaries
into regime boundaries with intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from threeregime.analysis.cells import CELL
from threeregime.analysis.regimes import REGIMES, choose_thresholds, classify, otsu_split
from threeregime.config.settings import RegimeConfig

SEED = 20230  # fixed: the probabilities are part of the results
PAIR_KEYS = ["dense_seed", "seed_a", "seed_b"]


@dataclass(frozen=True)
class Draws:
    """Draws of the classification: per draw and cell (in ``cells``' order) the means and the
    label (an index into REGIMES), per draw the thresholds; ``measured``: the cells whose
    uncertainty the method could estimate (the others get no probability)."""

    method: str
    cells: pd.DataFrame
    mc: np.ndarray
    cka: np.ndarray
    eps: np.ndarray
    cut: np.ndarray
    labels: np.ndarray
    measured: np.ndarray
    units: str = "dense seeds"

    def probabilities(self) -> np.ndarray:
        """[cell, regime]: the share of draws giving each regime (NaN where unmeasured)."""
        shares = np.stack([(self.labels == k).mean(axis=0) for k in range(len(REGIMES))], axis=1)
        return np.where(self.measured[:, None], shares, np.nan)


# ----------------------------------------------------------------------------- the pooled model
@dataclass(frozen=True)
class Noise:
    """One metric's noise: per cell the observed mean, its units, the moderated unit variance
    and its degrees of freedom; the grid's residual degrees of freedom (0: nothing replicated);
    ``shared``: the cells' variances are consistent with the trend alone (then each cell's
    variance is the trend's, and a draw draws one factor for all cells)."""

    means: np.ndarray
    units: np.ndarray
    variance: np.ndarray
    dof: np.ndarray
    pooled_dof: float
    shared: bool

    @property
    def replicated(self) -> bool:
        return self.pooled_dof > 0 and bool(np.isfinite(self.variance).all())


def unit_table(
    observations: pd.DataFrame, cka_metric: str, keys: list[str] = CELL
) -> tuple[pd.DataFrame, str]:
    """The cells' independent units: per cell (its ``keys``) and dense seed the mean of its
    pairs' mc and CKA; with one dense seed in every cell, the pairs themselves. Returns (units,
    what a unit is)."""
    missing = [c for c in keys + PAIR_KEYS + ["mc", cka_metric] if c not in observations]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing} needed by the uncertainty model")
    columns = ["mc", cka_metric]
    dense_per_cell = observations.groupby(keys)["dense_seed"].nunique()
    if (dense_per_cell <= 1).all():
        return observations[keys + columns].copy(), "retrain pairs (one dense seed per cell)"
    table = observations.groupby(keys + ["dense_seed"], sort=True)[columns].mean().reset_index()
    return table, "dense seeds"


# Where a metric has no room to vary, its noise vanishes: mc at 0 (no barrier), CKA at 1 (the
# same function). The noise level follows the distance from there (on the demo the log variance
# rises ~2.4x as fast as the log distance, for both), so the prior level is a trend in it.
NOISE_COVARIATES = {
    "mc": lambda means: np.log(np.abs(means) + 1e-3),
    "cka": lambda means: np.log(np.clip(1 - means, 0, None) + 1e-4),
}


def noise(units: pd.DataFrame, cells: pd.DataFrame, metric: str, kind: str, keys: list[str] = CELL) -> Noise:
    """The moderated noise of one metric (``kind``: mc or cka, its noise covariate), for
    ``cells`` (their ``keys`` columns) in order."""
    grouped = units.groupby(keys, sort=True)[metric]
    stats = pd.DataFrame({"mean": grouped.mean(), "n": grouped.size(), "var": grouped.var(ddof=1)})
    stats = stats.reindex(pd.MultiIndex.from_frame(cells[keys]))
    means, n = stats["mean"].to_numpy(float), stats["n"].to_numpy(float)
    own_dof = np.maximum(n - 1, 0)
    own_var = np.nan_to_num(stats["var"].to_numpy(float))
    levels, prior_dof, residual_dof = moderation_prior(own_var, own_dof, NOISE_COVARIATES[kind](means))
    shared = math.isinf(prior_dof)
    if shared:
        variance, dof = levels, np.full(len(n), residual_dof)
    else:
        variance = (prior_dof * levels + own_dof * own_var) / (prior_dof + own_dof)
        dof = prior_dof + own_dof
    return Noise(means, n, variance, dof, residual_dof, shared)


def moderation_prior(
    variances: np.ndarray, dofs: np.ndarray, covariate: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """(s0^2 per cell, d0, residual degrees of freedom): the prior level of each cell's variance,
    a log-linear trend in ``covariate`` (limma-trend), and how many degrees of freedom the prior
    is worth, from the spread of the log variances around the trend (Smyth 2004). d0 is infinite
    when that spread is no larger than sampling alone explains: every cell's variance is then
    the trend's, known up to one factor with the residual degrees of freedom. A trend needs four
    replicated cells, a spread three; with fewer, the pooled variance is the level everywhere."""
    from scipy.special import digamma, polygamma

    replicated = (dofs > 0) & (variances > 0)
    total_dof = float(dofs.sum())
    if replicated.sum() < 3:
        pooled = float((dofs * variances).sum() / total_dof) if total_dof else math.nan
        return np.full(len(variances), pooled), math.inf, total_dof
    d, x = dofs[replicated], covariate[replicated]
    e = np.log(variances[replicated]) - digamma(d / 2) + np.log(d / 2)
    design = np.column_stack([np.ones_like(x), x]) if replicated.sum() >= 4 else np.ones((len(x), 1))
    coef, _, rank, _ = np.linalg.lstsq(design, e, rcond=None)
    residual = e - design @ coef
    spread = float((residual**2).sum() / (len(e) - rank) - np.mean(polygamma(1, d / 2)))
    full = np.column_stack([np.ones_like(covariate), covariate])[:, : design.shape[1]]
    trend = full @ coef
    residual_dof = max(total_dof - rank, 1.0)
    if spread <= 0:  # one factor times the trend's shape: the pooled variance of the standardised cells
        shape = np.exp(trend - trend.mean())
        factor = float((dofs * variances / shape).sum() / total_dof)
        return factor * shape, math.inf, residual_dof
    prior_dof = 2 * _inverse_trigamma(spread)
    return np.exp(trend + digamma(prior_dof / 2) - np.log(prior_dof / 2)), prior_dof, residual_dof


def _inverse_trigamma(x: float) -> float:
    """y with trigamma(y) = x, by Newton's method (Smyth 2004, appendix)."""
    from scipy.special import polygamma

    if x > 1e7:
        return 1 / math.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def pooled_draws(
    observations: pd.DataFrame, cfg: RegimeConfig, count: int, seed: int = SEED, keys: list[str] = CELL
) -> Draws:
    """``count`` draws of the classification under the pooled noise model (module docstring).
    ``keys``: what tells cells apart (several runs classified jointly add a run column:
    threeregime.analysis.compare)."""
    units, unit_kind = unit_table(observations, cfg.cka_metric, keys)
    cells = units.groupby(keys, sort=True).size().rename("n").reset_index()
    mc, cka = noise(units, cells, "mc", "mc", keys), noise(units, cells, cfg.cka_metric, "cka", keys)
    rng = np.random.default_rng(seed)
    shape = (count, len(cells))
    drawn, variance = {}, {}
    for name, metric in (("mc", mc), ("cka", cka)):
        if not metric.replicated:
            drawn[name] = np.broadcast_to(metric.means, shape).copy()
            variance[name] = np.zeros(shape)
            continue
        if metric.shared:  # the trend's level, one factor for the whole grid drawn per draw
            factor = metric.pooled_dof / rng.chisquare(metric.pooled_dof, (count, 1))
            variance[name] = factor * metric.variance
        else:  # each cell's moderated noise
            variance[name] = metric.variance * metric.dof / rng.chisquare(metric.dof, size=shape)
        drawn[name] = metric.means + np.sqrt(variance[name] / metric.units) * rng.standard_normal(shape)
    drawn["cka"] = np.minimum(drawn["cka"], 1.0)  # a similarity: at most 1
    eps = np.full(count, cfg.eps)
    if cfg.eps_mode == "noise" and mc.replicated:  # the point rule on a run of the same design
        replicated = mc.units >= 2
        d = mc.units[replicated] - 1
        sample = variance["mc"][:, replicated] * rng.chisquare(d, size=(count, int(replicated.sum()))) / d
        errors = np.sqrt(sample / mc.units[replicated])
        eps = np.maximum(cfg.eps, cfg.eps_z * np.median(errors, axis=1))
    cut = np.array([_cut(drawn["mc"][r], drawn["cka"][r], eps[r], cfg) for r in range(count)])
    labels = _labels(drawn["mc"], drawn["cka"], eps, cut)
    measured = np.full(len(cells), mc.replicated and cka.replicated)
    return Draws("pooled", cells[keys], drawn["mc"], drawn["cka"], eps, cut, labels, measured, unit_kind)


def _cut(mc: np.ndarray, cka: np.ndarray, eps: float, cfg: RegimeConfig) -> float:
    """The CKA cut of one draw, by the point estimate's rule (regimes.choose_thresholds)."""
    if cfg.cka_cut_mode != "split":
        return cfg.cka_cut
    connected = cka[mc >= -eps]
    if len(connected) < cfg.cka_split_min_cells:
        return cfg.cka_cut
    split = otsu_split(connected)
    return cfg.cka_cut if split is None else split[0]


def _labels(mc: np.ndarray, cka: np.ndarray, eps: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """[draw, cell] regime indices: I if mc < -eps, else II-A if CKA < cut, else II-B."""
    connected = mc >= -eps[:, None]
    similar = cka >= cut[:, None]
    return np.where(
        ~connected, REGIMES.index("I"), np.where(similar, REGIMES.index("II-B"), REGIMES.index("II-A"))
    )


# ----------------------------------------------------------------------------- the bootstrap
class _Design:
    """The observations as arrays, indexed once: cell of each row, and the resampling groups."""

    def __init__(self, observations: pd.DataFrame, cka_metric: str, keys: list[str] = CELL):
        missing = [c for c in keys + PAIR_KEYS + ["mc", cka_metric] if c not in observations]
        if missing:
            raise ValueError(f"metrics table lacks columns {missing} needed by the bootstrap")
        obs = observations.sort_values(keys + PAIR_KEYS).reset_index(drop=True)
        grouped = obs.groupby(keys, sort=True)
        self.cells = grouped.size().rename("n").reset_index()
        self.cell_of = grouped.ngroup().to_numpy()
        self.mc = obs["mc"].to_numpy(float)
        self.cka = obs[cka_metric].to_numpy(float)
        self.cka_metric = cka_metric
        self.dense_seeds = sorted(obs["dense_seed"].unique())
        dense_index = {s: i for i, s in enumerate(self.dense_seeds)}
        self.groups = []  # (rows, dense index, retrain seeds, row seed positions a, b)
        for (_, dense), rows in obs.groupby([self.cell_of, "dense_seed"], sort=True):
            seeds = sorted(set(rows["seed_a"]) | set(rows["seed_b"]))
            position = {s: i for i, s in enumerate(seeds)}
            a = rows["seed_a"].map(position).to_numpy()
            b = rows["seed_b"].map(position).to_numpy()
            self.groups.append((rows.index.to_numpy(), dense_index[dense], len(seeds), a, b))
        units = pd.DataFrame(
            [(self.cell_of[g[0][0]], len(g[0])) for g in self.groups], columns=["cell", "pairs"]
        )
        per_cell = units.groupby("cell").agg(dense=("pairs", "size"), pairs=("pairs", "max"))
        # resampling changes nothing without two dense seeds or two pairs in one dense seed
        self.measured = ((per_cell["dense"] >= 2) | (per_cell["pairs"] >= 2)).to_numpy()

    def weights(self, rng: np.random.Generator) -> np.ndarray:
        """Row weights of one resample: dense seeds drawn once for the whole grid (every cell of
        a temperature row is pruned from the same dense run), then within each cell and dense
        seed the retrain seeds with replacement (at least two distinct, the least that makes a
        pair), each pair counting with the product of its seeds' multiplicities."""
        dense = np.bincount(rng.integers(0, len(self.dense_seeds), len(self.dense_seeds)),
                            minlength=len(self.dense_seeds))  # fmt: skip
        w = np.zeros(len(self.mc))
        for rows, d, k, a, b in self.groups:
            if dense[d] == 0:
                continue
            counts = np.ones(k)
            if k > 2:
                while True:
                    counts = np.bincount(rng.integers(0, k, k), minlength=k)
                    if (counts > 0).sum() >= 2:
                        break
            w[rows] = dense[d] * counts[a] * counts[b]
        return w

    def table(self, w: np.ndarray) -> pd.DataFrame:
        """The cells table of one resample: weighted means, mc spread, the original n."""
        total = np.bincount(self.cell_of, weights=w, minlength=len(self.cells))
        empty = total == 0  # a cell whose dense seeds were all left out keeps its own rows
        if empty.any():
            w = np.where(empty[self.cell_of], 1.0, w)
            total = np.bincount(self.cell_of, weights=w, minlength=len(self.cells))
        out = self.cells.copy()
        mc = np.bincount(self.cell_of, weights=w * self.mc, minlength=len(out)) / total
        out["mc_mean"] = mc
        out[f"{self.cka_metric}_mean"] = (
            np.bincount(self.cell_of, weights=w * self.cka, minlength=len(out)) / total
        )
        square = np.bincount(self.cell_of, weights=w * (self.mc - mc[self.cell_of]) ** 2, minlength=len(out))
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mc_std"] = np.where(total > 1, np.sqrt(square / (total - 1)), np.nan)
        return out


def bootstrap_draws(
    observations: pd.DataFrame, cfg: RegimeConfig, resamples: int, seed: int = SEED, keys: list[str] = CELL
) -> Draws:
    """``resamples`` bootstrap resamples of the observations, each classified afresh (thresholds
    included). A cell with one dense seed and at most one pair per dense seed has nothing to
    resample: it is unmeasured. Dense seeds are drawn once for all cells, of every run when
    ``keys`` tells runs apart (runs that share dense models share their draw)."""
    design = _Design(observations, cfg.cka_metric, keys)
    rng = np.random.default_rng(seed)
    mc, cka, eps, cut, labels = [], [], [], [], []
    for _ in range(resamples):
        table = design.table(design.weights(rng))
        thresholds = choose_thresholds(table, cfg)
        regime = classify(table, thresholds.eps, thresholds.cka_cut, cfg.cka_metric).to_numpy()
        mc.append(table["mc_mean"].to_numpy())
        cka.append(table[f"{cfg.cka_metric}_mean"].to_numpy())
        eps.append(thresholds.eps)
        cut.append(thresholds.cka_cut)
        labels.append([REGIMES.index(r) for r in regime])
    return Draws(
        "bootstrap", design.cells[keys], np.array(mc), np.array(cka), np.array(eps), np.array(cut),
        np.array(labels), design.measured, "dense and retrain seeds, resampled",
    )  # fmt: skip


def uncertainty_draws(
    observations: pd.DataFrame | None, cfg: RegimeConfig, keys: list[str] = CELL
) -> Draws | None:
    """The draws of the configured method (regimes.uncertainty), or None when it is none or there
    are no per-pair observations; ``keys`` tell the cells apart (default: one run's)."""
    if observations is None or cfg.uncertainty == "none":
        return None
    if cfg.uncertainty == "bootstrap":
        return bootstrap_draws(observations, cfg, cfg.bootstrap, keys=keys) if cfg.bootstrap > 0 else None
    return pooled_draws(observations, cfg, cfg.draws, keys=keys)
