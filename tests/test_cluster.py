"""How many Slurm jobs a run submits under profiles/slurm: its job grouping and local rules.

A dry run (`snakemake -n --profile profiles/slurm`) lists every group job once ("Group job NAME")
and every other job as "rule NAME:"; jobs of local rules run on the submitting host. The count of
submissions is therefore read from the plan itself and compared with the one computed from the
config and the profile's group settings. No Slurm is needed: a dry run submits nothing.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from threeregime.config.load import load_config, merge_configs, read_config_file

from .conftest import REPO
from .test_cifar import write_fake_cifar
from .test_presets import _files as preset_files
from .test_presets import _job_stats

PRESETS = REPO / "presets"
SLURM_PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
LOCAL_RULES = {"prepare_data", "collect", "classify", "plot"}
# Submissions of each preset before grouping (one sbatch per job, local rules included), for the
# comparison in docs/cluster.md; they equal the preset tests' dry-run totals less the `all` rule.
UNGROUPED = {"epochs": 2212, "batchsize": 832, "sam": 1108, "epochs+gpu-fast": 196}
PRESET_LIMIT = {"epochs": 500}  # the goal: the Figure-2 preset submits at most 500 Slurm jobs


def preset_configfiles(name: str) -> list[Path]:
    """The --configfile list of one preset (the only place tests name preset files here)."""
    if name == "epochs+gpu-fast":
        return [*preset_configfiles("epochs"), PRESETS / "overlays" / "gpu-fast.yaml"]
    return [Path(f) for f in preset_files(name)]


GROUP_HEADER = re.compile(r"^\[.*\] Group job (\w+) ")
JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")


def submissions(plan: str) -> Counter:
    """Slurm jobs a dry-run plan would submit, by group or rule name (local rules and `all` left out)."""
    counts = Counter()
    for line in plan.splitlines():
        group = GROUP_HEADER.match(line)
        job = JOB_HEADER.match(line)  # members of a group job are indented: not matched
        if group:
            counts[group.group(1)] += 1
        elif job and job.group(1) not in LOCAL_RULES | {"all"}:
            counts[job.group(1)] += 1
    return counts


def expected_submissions(cfg) -> Counter:
    """From the config and the profile: ungrouped dense_train jobs, one `cell` group per pruned
    model's retrain job (prune joins it), metrics jobs in batches of the group's components."""
    groups, components = SLURM_PROFILE["groups"], SLURM_PROFILE["group-components"]
    assert groups == {"prune": "cell", "retrain": "cell", "metrics": "metrics"}
    dense_models = len(cfg.temperatures) * len(cfg.seeds.dense)
    cells = dense_models * len(cfg.densities)
    retrain_jobs = {"none": cells, "cell": cells, "temperature": dense_models}
    # packed per dense model (temperature), one metrics job measures all of its pairs
    metrics = dense_models if cfg.runtime.retrain_pack == "temperature" else cells * len(cfg.retrain_pairs)
    return Counter(
        dense_train=dense_models,
        cell=retrain_jobs[cfg.runtime.retrain_pack],
        metrics=math.ceil(metrics / components["metrics"]),
    )


def test_the_rules_declare_exactly_the_local_rules_each_by_itself():
    """`localrule: True` on each rule, never a `localrules:` list: its names would not follow a
    deployment's `use rule * from threeregime as threeregime_*`."""
    from threeregime.views.walltime import local_rules

    for path in [REPO / "workflow" / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        assert not re.search(r"^\s*localrules:", path.read_text(), re.MULTILINE), path.name
    # the rules of adaptive grids and of pruning setups, on top of every run's local rules
    assert local_rules() == LOCAL_RULES | {"adaptive_round", "compare_setups"}


# Measured on one H200 (benchmarks/README.md, 2026-11-26): a CIFAR-10 PreResNet-20 epoch at
# batch 64, and a whole metrics job (one retrain pair) at the presets' settings.
EPOCH_S, METRICS_JOB_S, PAPER_EPOCHS = 7.0, 10.0, 160


def test_grouped_gpu_jobs_do_ten_minutes_of_work_at_paper_scale():
    """The profile's rule: every grouped GPU job holds >= ~10 min of measured GPU work, and its
    Slurm time limit (the members' limits added up) covers that work with room to spare."""
    components = SLURM_PROFILE["group-components"]
    limits = {rule: r["runtime"] for rule, r in SLURM_PROFILE["set-resources"].items()}
    metrics_group_s = components["metrics"] * METRICS_JOB_S
    assert metrics_group_s >= 600
    assert components["metrics"] * limits["metrics"] * 60 >= 5 * metrics_group_s
    retrain_s = PAPER_EPOCHS * EPOCH_S  # the smallest cell job: one unpacked retraining
    assert retrain_s >= 600 and (limits["prune"] + limits["retrain"]) * 60 >= 5 * retrain_s
    # One machine: no grouping there.
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert not {"groups", "group-components"} & set(default)


@pytest.mark.parametrize("name", list(UNGROUPED))
def test_slurm_profile_groups_each_preset_into_few_full_jobs(name, tmp_path, capsys):
    from .test_incremental import snakemake

    write_fake_cifar(tmp_path / "data")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    files = [str(p) for p in preset_configfiles(name)]
    result = snakemake(tmp_path, "-n", "--profile", "profiles/slurm", "--configfile", *files)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = result.stdout + result.stderr
    got = submissions(plan)
    layers = [read_config_file(path) for path in preset_configfiles(name)]
    cfg = load_config(merge_configs(*layers, {"data": {"root": str(tmp_path / "data")}}))
    assert got == expected_submissions(cfg)
    assert _job_stats(plan)["total"] - 1 == UNGROUPED[name]  # every job but `all`, one sbatch each
    total = sum(got.values())
    assert total <= PRESET_LIMIT.get(name, UNGROUPED[name])
    assert not (tmp_path / "results").exists()
    with capsys.disabled():
        print(f"\n{name}: {total} Slurm jobs ({dict(got)}) instead of {UNGROUPED[name]}")


def test_iterative_chains_are_submitted_job_by_job_with_the_documented_groups(tmp_path):
    """The profile's `cell` group would join an IMP chain into one Slurm job (each level prunes
    the previous level's retraining); the override docs/cluster.md gives submits each alone."""
    from .test_incremental import snakemake

    write_fake_cifar(tmp_path / "data")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    lottery = str(REPO / "presets" / "lottery.yaml")
    result = snakemake(tmp_path, "-n", "--profile", "profiles/slurm", "--configfile", lottery)
    assert submissions(result.stdout)["cell"] == 3  # one chain per dense seed
    overridden = ["--groups", "prune=prune", "retrain=retrain", "metrics=metrics"]
    result = snakemake(tmp_path, "-n", "--profile", "profiles/slurm", "--configfile", lottery, *overridden)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = submissions(result.stdout)
    assert (counts["prune"], counts["retrain"], counts["metrics"]) == (60, 90, 1)
