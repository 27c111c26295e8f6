"""Progress of a run, read from its files while Snakemake may still be running (no lock taken).

Every job's state comes from what is on disk: its output (written atomically, so present means
complete), Snakemake's incomplete marker (``.snakemake/incomplete/``, set when a job starts and
removed when it ends or fails), and its log. A job is

* ``done``: its outputs exist and are whole (a checkpoint is a complete zip archive, a JSON
  file parses): a file truncated by a copy or a full disk is not counted as done;
* ``running``: Snakemake marked an output incomplete (started, not ended);
* ``failed``: its log exists but no output and no marker (the log's last error line says why),
  or an output is damaged;
* ``not started``: no log, no output.

A cell (temperature, density) is done when all its metrics files exist, failed when a job it
needs failed (the dataset's included), running when one of its jobs runs, ``partial`` when some
of its jobs are done and none runs, else not started. The run's own jobs (dataset, collect,
classify, plot) are counted and named too. The paths are the workflow's
(``workflow/rules/common.smk``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from threeregime.config.experiment import ExperimentConfig

STATES = ("done", "running", "failed", "partial", "not started")
SYMBOL = {"done": "#", "running": ">", "failed": "X", "partial": "~", "not started": "."}
COLOR = {"done": "#2ca02c", "running": "#1f77b4", "failed": "#d62728", "partial": "#ffbf00"}
COLOR["not started"] = "#dddddd"


@dataclass
class Job:
    rule: str
    outputs: list[Path]
    log: Path
    state: str = "not started"
    error: str = ""


@dataclass
class Cell:
    temperature: str
    density: str
    jobs: list[Job] = field(default_factory=list)  # its own: prune, retrain, metrics
    dense: list[Job] = field(default_factory=list)  # the dense models it is pruned from
    state: str = "not started"

    @property
    def metrics(self) -> list[Job]:
        return [job for job in self.jobs if job.rule == "metrics"]


def incomplete_outputs(workdir: Path) -> set[Path]:
    """Outputs Snakemake marked incomplete (its file persistence: one file per output, named by
    the URL-safe base64 of the path, split into '@'-prefixed folders when long)."""
    root = workdir / ".snakemake" / "incomplete"
    marked = set()
    for folder, _, files in os.walk(root):
        for name in files:
            relative = Path(folder, name).relative_to(root)
            encoded = "".join(part.removeprefix("@") for part in relative.parts)
            try:
                marked.add(Path(base64.urlsafe_b64decode(encoded).decode()))
            except (ValueError, UnicodeDecodeError):
                continue  # not a marker (e.g. Snakemake's migration flag)
    return marked


def last_error(log: Path) -> str:
    """The job's one-line error: the CLI's 'error:' line, else the log's last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("File ")]
    if errors:
        return errors[-1][:200]
    return f"no error in its log (killed?); last line: {lines[-1] if lines else '(empty)'}"[:200]


def whole(path: Path) -> bool:
    """Whether an existing output is complete: a torch checkpoint is a zip archive with its
    central directory (written last), a JSON file parses; other files count as they are."""
    if path.suffix == ".pt":
        return zipfile.is_zipfile(path)
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return False
    return True


def job_state(job: Job, workdir: Path, marked: set[Path]) -> None:
    if marked & set(job.outputs):
        job.state = "running"
    elif all((workdir / out).exists() for out in job.outputs):
        damaged = [out for out in job.outputs if not whole(workdir / out)]
        job.state = "failed" if damaged else "done"
        if damaged:
            job.error = f"{damaged[0]} is damaged (truncated?); delete it and run snakemake again"
    elif (workdir / job.log).exists():
        job.state, job.error = "failed", last_error(workdir / job.log)


def setup_folders(cfg: ExperimentConfig) -> tuple[str, str]:
    """Where a setup of prune.setups keeps its files: the folder its pruned, retrained and
    metrics files sit in under each stage's folder, and the folder of its tables and figures
    ("", "" for a run without prune.setups)."""
    return (f"setup-{cfg.setup}/", f"setups/{cfg.setup}/") if cfg.setup else ("", "")


def run_jobs(cfg: ExperimentConfig) -> dict[str, Job]:
    """The run's jobs outside the cells: the dataset, and the analysis of the whole grid (of the
    setup ``cfg`` is, under prune.setups)."""
    res = Path("results") / cfg.run_name
    tables = res / setup_folders(cfg)[1]
    outputs = {
        "prepare_data": [res / "data/dataset.pt"],
        "collect": [tables / "metrics.csv", tables / "cells.csv"],
        "classify": [tables / "regimes.csv", tables / "summary.json"],
        "plot": [tables / "phase_diagram.png", tables / "regime_map.png"],
    }
    logs = {"prepare_data": res / "logs/prepare_data.log"}
    return {
        rule: Job(rule, files, logs.get(rule, res / "logs" / setup_folders(cfg)[1] / f"{rule}.log"))
        for rule, files in outputs.items()
    }


def plan_cells(cfg: ExperimentConfig, data: Job | None = None) -> list[Cell]:
    """Every cell of the grid with the jobs it needs (the workflow's paths and log names); every
    cell needs the dataset's job ``data`` too (None: not tracked)."""
    res, knob = Path("results") / cfg.run_name, cfg.knob.name
    seeds = [str(s) for s in cfg.seeds.retrain]
    pack = cfg.runtime.retrain_pack
    runs = {  # one job per dense file: a shared dense run serves every temperature
        (folder, s): Job(
            "dense_train",
            [res / f"dense/{folder}/seed{s}/model.pt"],
            res / f"logs/dense/{folder}/seed{s}.log",
        )
        for folder in {cfg.dense_folder(t) for t in cfg.temperatures}
        for s in map(str, cfg.seeds.dense)
    }
    dense = {
        (t, s): runs[(cfg.dense_folder(t), s)] for t in cfg.temperatures for s in map(str, cfg.seeds.dense)
    }
    rewind = {  # weight rewinding's replay of the dense run's first k iterations
        (t, s): Job(
            "rewind",
            [res / f"rewind/{knob}-{t}/seed{s}/model.pt"],
            res / f"logs/rewind/{knob}-{t}/seed{s}.log",
        )
        for t in cfg.temperatures
        for s in map(str, cfg.seeds.dense)
        if cfg.retrain.rewinds_weights
    }
    cells = []
    setup = setup_folders(cfg)[0]
    for t in cfg.temperatures:
        for d in cfg.densities:
            cell = Cell(t, d)
            if data is not None:
                cell.dense.append(data)
            for s in map(str, cfg.seeds.dense):
                path = f"{setup}{knob}-{t}/density-{d}/seed{s}"
                cell.dense.append(dense[(t, s)])
                if (t, s) in rewind:
                    cell.dense.append(rewind[(t, s)])
                # packed per dense model (retrain_pack temperature), a job is listed in each of
                # its cells with that cell's outputs and the job's one log (counted once)
                model = f"{setup}{knob}-{t}/seed{s}"
                packed = pack == "temperature"
                pruned = res / f"pruned/{path}/model.pt"
                cell.jobs.append(Job("prune", [pruned], res / f"logs/prune/{model if packed else path}.log"))
                retrained = [res / f"retrain/{path}/retrain{r}/model.pt" for r in seeds]
                if pack == "none":
                    logs = [res / f"logs/retrain/{path}/retrain{r}.log" for r in seeds]
                    cell.jobs += [Job("retrain", [out], log) for out, log in zip(retrained, logs)]
                else:
                    folder = model if packed else path
                    cell.jobs.append(Job("retrain", retrained, res / f"logs/retrain/{folder}/retrain.log"))
                for a, b in cfg.retrain_pairs:
                    log = f"{model}.log" if packed else f"{path}/pair{a}-{b}.log"
                    cell.jobs.append(
                        Job("metrics", [res / f"metrics/{path}/pair{a}-{b}.json"], res / "logs/metrics" / log)
                    )
            cells.append(cell)
    return cells


def by_log(jobs: list[Job]) -> dict[Path, list[Job]]:
    """Jobs grouped by their log: the parts of one job packed per dense model share it."""
    groups: dict[Path, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.log, []).append(job)
    return groups


def new_parts_not_started(parts: list[Job], workdir: Path) -> None:
    """A job packed per dense model is listed once per cell with that cell's outputs and the
    job's one log. Snakemake removes a failed job's outputs, so a part whose outputs are missing
    while other parts of the same job are done was added later (a new density) and has not
    run: not started, though the job's log exists."""
    for same in by_log(parts).values():
        if len(same) > 1 and any(job.state == "done" for job in same):
            for job in same:
                if job.state == "failed" and not any((workdir / out).exists() for out in job.outputs):
                    job.state, job.error = "not started", ""


def read_status(cfg: ExperimentConfig, workdir: Path = Path(".")) -> tuple[list[Cell], list[Job]]:
    """The grid's cells and the run's own jobs, each with its state read from disk."""
    marked = incomplete_outputs(workdir)
    run = run_jobs(cfg)
    for job in run.values():
        job_state(job, workdir, marked)
    cells = plan_cells(cfg, run["prepare_data"])
    for cell in cells:
        for job in cell.jobs + cell.dense:
            if job.state == "not started":  # a dense job is shared by a row's cells
                job_state(job, workdir, marked)
    new_parts_not_started([job for cell in cells for job in cell.jobs], workdir)
    for cell in cells:
        own = {job.state for job in cell.jobs}
        if all(job.state == "done" for job in cell.metrics):
            cell.state = "done"
        elif "failed" in own or any(job.state == "failed" for job in cell.dense):
            cell.state = "failed"
        elif "running" in own:
            cell.state = "running"
        elif "done" in own:
            cell.state = "partial"
    return cells, list(run.values())


def distinct_jobs(listed: list[Job]) -> list[Job]:
    """Each job once: a job packed per dense model is listed in each of its cells (one log);
    it failed if a part did, runs if a part does, is done if all parts are."""
    jobs = []
    for log, same in by_log(listed).items():
        states = {job.state for job in same}
        state = next((s for s in ("failed", "running") if s in states), None)
        state = state or ("done" if states == {"done"} else "not started")  # some parts to (re)do
        error = next((job.error for job in same if job.error), "")
        outputs = list(dict.fromkeys(out for job in same for out in job.outputs))
        jobs.append(Job(same[0].rule, outputs, log, state, error))
    return jobs


def terminal_grid(cfg: ExperimentConfig, cells: list[Cell], run: list[Job] = ()) -> str:
    """Rows: temperatures (hottest on top, as in the figures); columns: densities; each cell
    its state symbol and metrics files done / needed; then counts of the cells and of all jobs
    (the run's own ``run`` jobs too), and every failed job."""
    by_key = {(c.temperature, c.density): c for c in cells}
    width = max(8, *(len(d) + 2 for d in cfg.densities))
    name = f"{cfg.run_name} / setup {cfg.setup}" if cfg.setup else cfg.run_name
    lines = [f"{name}: {cfg.knob.name} (rows) x density (columns)"]
    lines.append(" " * 10 + "".join(d.rjust(width) for d in cfg.densities))
    for t in reversed(cfg.temperatures):
        row = []
        for d in cfg.densities:
            cell = by_key[(t, d)]
            done = sum(job.state == "done" for job in cell.metrics)
            row.append(f"{SYMBOL[cell.state]} {done}/{len(cell.metrics)}".rjust(width))
        lines.append(t.rjust(10) + "".join(row))
    counts = {s: sum(c.state == s for c in cells) for s in STATES}
    lines.append("cells: " + ", ".join(f"{SYMBOL[s]} {s} {n}" for s, n in counts.items()))
    jobs = distinct_jobs([*run, *(j for c in cells for j in c.jobs + c.dense)])
    lines.append(
        "jobs: " + ", ".join(f"{s} {sum(j.state == s for j in jobs)}" for s in STATES if s != "partial")
    )
    for job in sorted((j for j in jobs if j.state == "failed"), key=lambda j: str(j.log)):
        lines.append(f"failed {job.rule} ({job.log}): {job.error}")
    return "\n".join(lines)


def partial_cells(cfg: ExperimentConfig, cells: list[Cell], workdir: Path) -> pd.DataFrame:
    """Per-cell means of the metrics files that exist so far (collect's averaging)."""
    from threeregime.analysis.cells import aggregate_cells
    from threeregime.io.files import read_json

    rows = []
    for cell in cells:
        for job in cell.metrics:
            if job.state != "done":
                continue
            record = read_json(workdir / job.outputs[0])
            models = pd.DataFrame(record.pop("models"))
            models = models.drop(columns=["retrain_seed", "seconds"], errors="ignore")
            pair = {k: v for k, v in record.items() if not k.startswith("lmc_") and k != "seconds"}
            rows.append(pair | models.mean().to_dict())
    return aggregate_cells(pd.DataFrame(rows)) if rows else pd.DataFrame()


def draw(cfg: ExperimentConfig, cells: list[Cell], workdir: Path, folder: Path) -> list[Path]:
    """progress.png (state of every cell) and, once some cells are measured, the partial phase
    diagram and regime map (missing cells blank, titles say PARTIAL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from threeregime.io.files import save_figure
    from threeregime.views.plot import DENSITY_LABEL, REGIME_COLORS, temperature_label, titled

    temps, dens = cfg.temperatures, cfg.densities
    index = {(c.temperature, c.density): c for c in cells}

    def grid(value) -> np.ndarray:
        return np.array([[value(index[(t, d)]) for d in dens] for t in temps], dtype=float)

    def axes(ax, title: str, named: bool = True) -> None:
        """Ticks, labels and the title (under the run's line when ``named``)."""
        ax.set_xticks(range(len(dens)), dens, rotation=45)
        ax.set_yticks(range(len(temps)), temps)
        ax.set_xlabel(DENSITY_LABEL)
        ax.set_ylabel(temperature_label(cfg.knob.name))
        ax.set_title(titled(cfg.description(), title) if named else title, fontsize=9)

    written = []
    n_done = sum(c.state == "done" for c in cells)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(dens), 1.8 + 0.45 * len(temps)))
    states = grid(lambda c: STATES.index(c.state))
    state_cmap = ListedColormap([COLOR[s] for s in STATES])
    ax.imshow(states, origin="lower", cmap=state_cmap, vmin=0, vmax=len(STATES) - 1)
    axes(ax, f"{cfg.run_name}: {n_done} of {len(cells)} cells done")
    ax.legend(
        handles=[Patch(color=COLOR[s], label=s) for s in STATES],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    written.append(folder / "progress.png")
    save_figure(fig, written[-1], cfg.plot.dpi)
    plt.close(fig)

    measured = partial_cells(cfg, cells, workdir)
    if measured.empty:
        return written
    from threeregime.config.settings import fmt_value

    values = measured.set_index(
        [[(fmt_value(t), fmt_value(d)) for t, d in zip(measured["temperature"], measured["density"])]]
    )
    label = f"PARTIAL: {len(measured)} of {len(cells)} cells measured, missing cells blank"

    def column(name):
        return grid(lambda c: values[name].get((c.temperature, c.density), math.nan))

    panels = [("test_error_mean", "test error"), ("mc_mean", "LMC mc"), ("cka_softmax_mean", "CKA (softmax)")]
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 1.8 + 0.45 * len(temps)))
    for ax, (name, title) in zip(axs, panels):
        image = ax.imshow(column(name), origin="lower", cmap=cfg.plot.cmap)
        fig.colorbar(image, ax=ax, shrink=0.8)
        axes(ax, title, named=False)
    fig.suptitle(titled(cfg.description(), f"Phase diagram, {label}"), color="#d62728", y=1.1)
    written.append(folder / "partial_phase_diagram.png")
    save_figure(fig, written[-1], cfg.plot.dpi)
    plt.close(fig)

    regimes = _partial_regimes(cfg, measured)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(dens), 1.8 + 0.45 * len(temps)))
    order = [*REGIME_COLORS, "?"]  # "?": not measured, drawn blank (NaN)
    codes = grid(lambda c: order.index(regimes.get((c.temperature, c.density), "?")))
    codes[codes == order.index("?")] = math.nan
    regime_cmap = ListedColormap(list(REGIME_COLORS.values()))
    ax.imshow(codes, origin="lower", cmap=regime_cmap, vmin=0, vmax=len(REGIME_COLORS) - 1)
    axes(ax, f"Regime map, {label}")
    ax.title.set_color("#d62728")
    ax.legend(
        handles=[Patch(color=c, label=r) for r, c in REGIME_COLORS.items()],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    written.append(folder / "partial_regime_map.png")
    save_figure(fig, written[-1], cfg.plot.dpi)
    plt.close(fig)
    return written


def _partial_regimes(cfg: ExperimentConfig, measured: pd.DataFrame) -> dict:
    """Regime of each measured cell, by the config's rules applied to the measured cells only
    (no advice: its reference cell may not be measured yet)."""
    from threeregime.analysis.regimes import classify_cells
    from threeregime.config.settings import RegimeConfig, fmt_value

    regimes, _ = classify_cells(measured, RegimeConfig(**cfg.analysis_spec()["regimes"]))
    keys = zip(regimes["temperature"], regimes["density"], regimes["regime"])
    return {(fmt_value(t), fmt_value(d)): regime for t, d, regime in keys}
