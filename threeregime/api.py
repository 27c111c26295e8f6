"""A small Python API over a run's results: load its tables, classify them again under other
rules, draw its figures, compare runs. The same functions the workflow's steps call, for a
notebook or a script (docs/api.md); nothing here trains or reads a model, and nothing writes
into a run's folder unless asked to.

    from threeregime import api

    demo = api.load_run("results/demo")            # or a run name: api.load_run("demo")
    demo.regimes                                    # the tables, as pandas DataFrames
    strict = demo.reclassify(eps_mode="fixed", eps=0.02)
    strict.draw("figures/strict")                   # phase diagram and regime map
    api.compare(demo, api.load_run("results/mnist1d-wanda"), out="figures/demo-vs-wanda")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import pandas as pd

from threeregime.analysis.compare import Comparison, RunTables, compare_runs
from threeregime.config.settings import ConfigError, PlotConfig, RegimeConfig
from threeregime.config.specs import regime_config_from_spec
from threeregime.io.files import read_json
from threeregime.stages.classify import classify_run
from threeregime.stages.compare import read_run, run_folder, write_comparison

__all__ = ["Comparison", "PlotConfig", "Run", "compare", "load_run"]
TABLES = ("metrics", "cells", "regimes", "selection", "boundaries")


@dataclass(frozen=True)
class Run:
    """One run's tables (``metrics``: one row per retrain pair; ``cells``, ``regimes``,
    ``selection``, ``boundaries``: as the workflow writes them), its ``summary``, what it is
    (``description``: run, setup, knob, model, data, pruning method) and the ``rules`` its
    regimes follow (threeregime.config.settings.RegimeConfig: the run's own, or those given to
    :meth:`reclassify`)."""

    folder: Path
    description: dict
    rules: RegimeConfig
    summary: dict
    metrics: pd.DataFrame
    cells: pd.DataFrame
    regimes: pd.DataFrame
    selection: pd.DataFrame
    boundaries: pd.DataFrame

    @property
    def name(self) -> str:
        """The setup's name under prune.setups, else the run's."""
        return str(self.description.get("setup") or self.description.get("run") or self.folder.name)

    def reclassify(self, **rules) -> Run:
        """The run classified again with some ``regimes.*`` settings changed (e.g.
        ``eps_mode="fixed", eps=0.02``), labels, probabilities, boundaries, advice and selection
        included; the run's files stay as they are. An unknown setting is a ConfigError."""
        changed = with_rules(self.rules, rules)
        result = classify_run(self.cells, self.metrics, changed)
        summary = result["summary"] | {"run": self.description, "regimes": asdict(changed)}
        tables = {name: result[name] for name in TABLES if name in result}
        return replace(self, rules=changed, summary=summary, **tables)

    def draw(
        self, folder: str | Path, formats: tuple[str, ...] = ("png",), plot: PlotConfig | None = None
    ) -> list[Path]:
        """The phase diagram and the regime map of these tables, titled with the run, into
        ``folder`` (``phase_diagram.<format>``, ``regime_map.<format>``); returns the paths."""
        from threeregime.views.plot import phase_diagram, regime_map

        folder, plot = Path(folder), plot or PlotConfig()
        phase = [folder / f"phase_diagram.{f}" for f in formats]
        maps = [folder / f"regime_map.{f}" for f in formats]
        phase_diagram(self.regimes, plot, [str(p) for p in phase], self.boundaries, self.description)
        regime_map(
            self.regimes, plot, [str(p) for p in maps], self.selection, self.boundaries, self.description
        )
        return phase + maps

    def tables(self) -> RunTables:
        """The tables a comparison reads (threeregime.analysis.compare)."""
        return RunTables(self.name, self.metrics, self.cells, self.description, self.regimes)


def with_rules(rules: RegimeConfig, changes: dict) -> RegimeConfig:
    """``rules`` with some ``regimes.*`` settings changed; an unknown one is a ConfigError."""
    known = {f.name for f in fields(RegimeConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not regimes settings (known: {', '.join(sorted(known))})")
    return replace(rules, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})


def load_run(run: str | Path) -> Run:
    """A run's results: a folder the workflow wrote (``results/<run_name>``, or
    ``results/<run_name>/setups/<name>`` for one setup of prune.setups) or a run name under
    ``results/``. One line naming the file when one is missing."""
    folder = run_folder(str(run))
    found = read_run(folder)  # metrics, cells, summary (with the run's description), regimes
    summary = read_json(folder / "summary.json")

    def table(name: str) -> pd.DataFrame:
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise ConfigError(f"{path}: not found; run snakemake for this run first")
        return (
            pd.read_csv(path, keep_default_na=False, na_values=[""])
            if name == "boundaries"
            else pd.read_csv(path)
        )

    return Run(
        folder=folder,
        description=found.description,
        rules=regime_config_from_spec(summary["regimes"]),
        summary=summary,
        metrics=found.observations,
        cells=found.cells,
        regimes=table("regimes"),
        selection=table("selection"),
        boundaries=table("boundaries"),
    )


def compare(*runs: Run | str | Path, out: str | Path | None = None, **rules) -> Comparison:
    """Two runs or more under shared thresholds (threeregime.analysis.compare): by the first
    run's rules, with ``rules`` changed (as :meth:`Run.reclassify` takes them); written to
    ``out`` as ``threeregime compare`` writes (tables and both figures) when given. Raises
    threeregime.analysis.compare.IncomparableRuns for runs of different knobs or without a
    common cell."""
    loaded = [run if isinstance(run, Run) else load_run(run) for run in runs]
    base = with_rules(loaded[0].rules, rules)
    tables = [run.tables() for run in loaded]
    names = [t.name for t in tables]
    if len(set(names)) < len(names):  # one name in two places: name each run by its folder
        tables = [replace(t, name=str(run.folder)) for t, run in zip(tables, loaded)]
    comparison = compare_runs(tables, base)
    if out is not None:
        write_comparison(comparison, out)
    return comparison
