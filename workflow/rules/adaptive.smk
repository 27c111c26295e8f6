# Adaptive refinement (adaptive.enabled): a coarse sub-grid, then rounds of planning checkpoints
# that each add the cells that could change the regime map and dense seeds to the cells whose
# label is uncertain (threeregime.analysis.adaptive). A cell's files are the same whichever round
# asked for them, so reruns and grid edits reuse every measured cell and seed.
# Without adaptive.enabled nothing here adds a job: collect takes the whole grid as before.
import json

from threeregime.config.experiment import coarse_cells

ADAPTIVE = CFG.adaptive.enabled
ADAPTIVE_SPEC = CFG.adaptive_spec()
ADAPTIVE_GRID = CFG.adaptive_grid()
# A round's plan; local(): it stays where snakemake runs, also under a storage provider
# (see the checkpoint below).
PLAN = f"{RES}/adaptive/round{{round}}.json"
FINAL_PLAN = PLAN.format(round=CFG.adaptive.rounds)


def cell_metrics(cells, extra_seeds=None):
    """The per-pair metrics files of some (temperature, density) cells: every dense seed of the
    config, and the seeds ``extra_seeds`` ("t/d" -> seeds) adds to a cell."""
    axes = CFG.metrics_axes()
    extra_seeds = extra_seeds or {}
    return [
        METRICS.format(temperature=t, density=d, seed=s, a=a, b=b)
        for t, d in cells
        for s in axes["seed"] + [str(x) for x in extra_seeds.get(f"{t}/{d}", [])]
        for a, b in axes["pair"]
    ]


def plan_of(round_number):
    """A round's plan: its cells and the extra dense seeds of each (round 0: the coarse
    sub-grid, no extra seed)."""
    if round_number == 0:
        return {"cells": coarse_cells(ADAPTIVE_GRID, CFG.adaptive.step), "seeds": {}}
    plan = checkpoints.adaptive_round.get(round=str(round_number)).output[0]
    return json.loads(Path(plan).read_text())


def planned_cells(round_number):
    """The cells measured after a round."""
    return [tuple(cell) for cell in plan_of(round_number)["cells"]]


def planned_metrics(round_number):
    """The metrics files of every cell and seed a round planned."""
    plan = plan_of(round_number)
    return cell_metrics([tuple(c) for c in plan["cells"]], plan["seeds"])


def adaptive_round_input(wildcards):
    """A round reads the previous round's plan and the metrics of every cell and seed it planned
    (one plain list: while a checkpoint is pending Snakemake replaces an input function's result
    by the checkpoint's output, so named inputs would not exist)."""
    previous = int(wildcards.round) - 1
    metrics = planned_metrics(previous)
    return metrics if previous == 0 else [local(PLAN.format(round=previous))] + metrics


def measured_on_disk(cells):
    """The cells among ``cells`` whose every metrics file exists (on disk, or in the storage of
    a storage provider): measured by an earlier run, whatever its plan (a larger budget, another
    grid), so they stay measured, never inferred."""
    return [cell for cell in cells if all(map(stored, cell_metrics([cell])))]


def collected_metrics(wildcards):
    """collect's inputs: the whole grid, or the cells of the last adaptive round, every other
    cell measured before (threeregime.stages.collect.metrics_paths keeps them) and the plan;
    under a storage provider also the jobs' benchmarks and logs its cost table reads."""
    cfg = cfg_of(wildcards)  # the setup's grid under prune.setups (never adaptive)
    if not ADAPTIVE:
        cells = [(t, d) for t in cfg.temperatures for d in cfg.densities]
        inputs, extra = all_metrics(cfg), {}
    else:
        planned = planned_cells(CFG.adaptive.rounds)
        earlier = [
            c for c in measured_on_disk(ADAPTIVE_GRID.cells()) if c not in planned
        ]
        cells, extra = planned + earlier, plan_of(CFG.adaptive.rounds)["seeds"]
        inputs = planned_metrics(CFG.adaptive.rounds) + cell_metrics(earlier)
        inputs += [local(FINAL_PLAN)]
    return inputs + (job_records(cells, extra, cfg) if STORAGE else [])


# Extra command-line flags of collect and classify under adaptive refinement ("" otherwise, so
# their commands stay as they are). Braces doubled: the strings go through shell formatting.
COLLECT_FLAGS = f" --plan {FINAL_PLAN}" if ADAPTIVE else ""
_GRID = {key: ADAPTIVE_SPEC[key] for key in ("temperatures", "densities", "reference")}
CLASSIFY_FLAGS = (
    f" --grid {shlex.quote(to_json(_GRID))}".replace("{", "{{").replace("}", "}}")
    if ADAPTIVE
    else ""
)


if ADAPTIVE:

    # Planning a round reads metrics files and writes a small plan (seconds): bookkeeping that
    # runs where snakemake runs, like collect and classify, never a queued cluster job. Its plan
    # stays there too, out of any storage provider: the next round and collect (local rules as
    # well) read it, and so does Snakemake itself when it builds the DAG (planned_cells), which
    # under a storage provider sees no stored file's contents.
    checkpoint adaptive_round:
        input:
            adaptive_round_input,
        output:
            local(PLAN),
        log:
            f"{LOGS}/adaptive/round{{round}}.log",
        benchmark:
            f"{BENCH}-local/adaptive-round{{round}}.tsv"
        wildcard_constraints:
            round=r"\d+",
        localrule: True
        conda:
            ENV
        params:
            spec=to_json(ADAPTIVE_SPEC),
            previous=lambda wc: (
                PLAN.format(round=int(wc.round) - 1) if int(wc.round) > 1 else ""
            ),
        shell:
            "python -m threeregime adaptive-plan --spec {params.spec:q} --round {wildcards.round}"
            " --previous '{params.previous}' --metrics {input} --out {output} > {log} 2>&1"
