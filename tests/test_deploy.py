"""The workflow as the Snakemake ecosystem deploys it: the files the workflow catalog reads, the
pinned environment, a project made by `snakedeploy deploy-workflow` that runs its own config
with the package installed from a clone, the same run with no shared file system (every file
through a storage provider) giving the same results, and the profiles of the engines without a
shared file system (Kubernetes, Google Batch).

snakedeploy's local-path provider copies a clone's config/ and profiles/ as it would from GitHub,
but writes the module's snakefile as "workflow/Snakefile", a path Snakemake resolves against the
deployed workflow/ folder (and it ignores --tag). The test therefore replaces that one line by
`gitfile(<clone>, path="workflow/Snakefile", tag=<release>)`, the offline twin of the
`github(..., tag=<release>)` snakedeploy writes for a GitHub URL: the rules are read from the
tagged commit, never from the clone's files on disk.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from threeregime.config import docs as config_docs
from threeregime.io import locks

from .conftest import REPO, SNAKEFILE, TINY_CONFIG, snakemake, write_config
from .test_cifar import write_fake_cifar
from .test_presets import _expected_jobs, _job_stats, _load

PYPROJECT = REPO / "pyproject.toml"
ENV_FILE = REPO / "envs" / "threeregime.yaml"
CATALOG = REPO / ".snakemake-workflow-catalog.yml"


# ----------------------------------------------------------------------------- catalog files
def test_catalog_finds_a_standardized_workflow():
    """What the catalog's generator reads: workflow/Snakefile, rules/*.smk, config/README.md, and
    .snakemake-workflow-catalog.yml as a YAML mapping (SafeLoader) with usage.mandatory-flags
    (desc, flags), usage.software-stack-deployment (booleans) and usage.report directly under
    usage (its code reads usage.report, not the key nested in its documentation's example)."""
    assert (REPO / "workflow" / "Snakefile").is_file()
    assert list((REPO / "workflow" / "rules").glob("*.smk"))
    assert (REPO / "config" / "README.md").is_file()
    settings = yaml.load(CATALOG.read_text(), Loader=yaml.SafeLoader)
    assert isinstance(settings, dict) and set(settings) == {"usage"}
    usage = settings["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    flags = usage["mandatory-flags"]
    assert set(flags) == {"desc", "flags"} and isinstance(flags["desc"], str) and flags["desc"]
    assert isinstance(flags["flags"], (list, str))
    deployment = usage["software-stack-deployment"]
    assert set(deployment) <= {"conda", "apptainer", "apptainer+conda", "singularity", "singularity+conda"}
    assert all(isinstance(value, bool) for value in deployment.values()) and deployment["conda"] is True
    assert usage["report"] is True
    assert "snakemake" in (REPO / "README.md").read_text().lower()  # the catalog searches READMEs


def test_config_readme_is_generated_from_the_schema_and_current():
    page = config_docs.CATALOG_PAGE.read_text()
    assert page == config_docs.render_catalog_page(page), (
        "config/README.md is out of date: run python -m threeregime.config.docs"
    )
    assert config_docs.tables(config_docs.full_schema())[0] in page.split(config_docs.GENERATED_BELOW)[1]


def test_a_deployment_reads_the_default_config_and_presets_from_config():
    """snakedeploy copies config/ (following links): the embedded default and the presets."""
    assert (REPO / "config" / "config.yaml").resolve() == (REPO / "config.yaml").resolve()
    assert (REPO / "config" / "presets").resolve() == (REPO / "presets").resolve()


def _pins() -> tuple[dict[str, str], list[str]]:
    """envs/threeregime.yaml: its pip pins (name: version) and its conda packages."""
    dependencies = yaml.safe_load(ENV_FILE.read_text())["dependencies"]
    pip = next(item["pip"] for item in dependencies if isinstance(item, dict))
    pins = dict(line.split("==") for line in pip)
    conda = [item for item in dependencies if isinstance(item, str)]
    return pins, conda


def test_environment_pins_exact_versions_within_pyproject():
    """Every runtime requirement of pyproject.toml (but Snakemake and its Slurm plugin, which run
    where snakemake runs, not in a job) and of its optional tracks (the mnist and lm extras) is
    pinned with == in envs/threeregime.yaml, at a version its range accepts; Python is pinned
    too."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins, conda = _pins()
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", name) and version for name, version in pins.items())
    assert [item for item in conda if item.startswith("python")] == ["python=3.11.7"]
    pinned = {canonicalize_name(name): version for name, version in pins.items()}
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    for text in [*project["dependencies"], *extras["mnist"], *extras["lm"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name.startswith("snakemake"):
            continue
        assert name in pinned, f"{name} is not pinned in {ENV_FILE.name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (name, pinned[name])


# ----------------------------------------------------------------------------- no package
def _bare_python(folder: Path, with_package_from: Path | None = None) -> Path:
    """A virtual environment that sees this one's packages (snakemake, torch, ...) through a .pth
    line but not its threeregime (an editable install's import hook is not run that way); with
    ``with_package_from``, the package is installed into it from that clone (not editable)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "parent-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    if with_package_from is not None:
        install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        subprocess.run([*install, str(with_package_from)], check=True, env=_clean_env(folder))
    return python


def _clean_env(venv: Path) -> dict:
    """This environment without PYTHONPATH, the virtual environment's bin/ first on PATH (the
    jobs' `python`)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_without_the_package_snakemake_says_how_to_install_it(tmp_path):
    """`snakemake --lint` (the catalog's check) or a run where the package is not installed: one
    line naming the missing module and how to install it, no traceback."""
    python = _bare_python(tmp_path / "venv")
    write_config(tmp_path / "run", TINY_CONFIG)
    result = subprocess.run(
        [python, "-m", "snakemake", "-s", str(SNAKEFILE), "--lint"],
        cwd=tmp_path / "run", env=_clean_env(tmp_path / "venv"), capture_output=True, text=True,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "this workflow runs the threeregime package, which this Python cannot import (No module named"
        " 'threeregime'): install it where snakemake runs: `pip install -e .` in a clone" in output
    ), output
    assert "Traceback" not in output


# ----------------------------------------------------------------------------- a deployment
RELEASE = "v" + re.search(r'^version = "(.+)"$', PYPROJECT.read_text(), re.M).group(1)


@dataclass
class Deployment:
    clone: Path
    folder: Path
    venv: Path
    run: subprocess.CompletedProcess

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def snakemake(self, *args: str, folder: Path | None = None, check: bool = True):
        command = [self.python, "-m", "snakemake", "--cores", "2", *args]
        result = subprocess.run(
            command, cwd=folder or self.folder, env=_clean_env(self.venv), capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


def _clone(target: Path) -> Path:
    """A git repository of this checkout's files as they are now (tracked and new ones, links
    kept as links), committed and tagged as the release, like a clone at that tag."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: {listed.stderr.strip()}")
    for name in sorted(set(filter(None, listed.stdout.split("\0")))):
        source, copy = REPO / name, target / name
        if not os.path.lexists(source):
            continue  # deleted in the working tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, copy)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "init.defaultBranch=x"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"], ["tag", RELEASE]):
        subprocess.run([*git, *step], cwd=target, check=True)
    return target


def _deploy(clone: Path, folder: Path) -> None:
    """snakedeploy deploy-workflow <clone> <folder> --tag <release>, then its module pointed at
    the tagged commit (the module docstring says why)."""
    snakedeploy = Path(sys.executable).parent / "snakedeploy"
    if not snakedeploy.exists():
        pytest.skip("snakedeploy is not installed (pip install -e '.[dev]')")
    subprocess.run([snakedeploy, "deploy-workflow", str(clone), str(folder), "--tag", RELEASE], check=True)
    snakefile = folder / "workflow" / "Snakefile"
    text = snakefile.read_text()
    written = re.search(r'module threeregime:\n    snakefile: *\n        "workflow/Snakefile"\n', text)
    assert written, text
    assert 'configfile: "config/config.yaml"' in text and "use rule * from threeregime\n" in text
    assert re.search(r"    config:\n        config\n", text), text
    pinned = f'gitfile("{clone}", path="workflow/Snakefile", tag="{RELEASE}")'
    snakefile.write_text(text.replace('"workflow/Snakefile"', pinned, 1))


# The tiny grid, one process per dense model for pruning, retraining and measuring (the demo's
# layout): the run without a shared file system then also proves that packed jobs read their
# models from their own inputs (local copies), never from results/.
DEPLOYED_CONFIG = copy.deepcopy(TINY_CONFIG)
DEPLOYED_CONFIG["runtime"] |= {"retrain_pack": "temperature"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Deployment:
    """A project deployed from a clone at the release, its own config the tests' tiny grid, the
    package installed from the clone into the environment snakemake runs in; run once."""
    root = tmp_path_factory.mktemp("deployment")
    clone = _clone(root / "threeregime")
    venv = root / "venv"
    _bare_python(venv, with_package_from=clone)
    folder = root / "project"
    _deploy(clone, folder)
    write_config(folder / "config", DEPLOYED_CONFIG)  # the user's own config/config.yaml
    deployment = Deployment(clone, folder, venv, run=None)
    deployment.run = deployment.snakemake()
    return deployment


@pytest.mark.slow
def test_a_deployed_project_runs_its_own_config_with_the_installed_package(deployed):
    results = deployed.folder / "results" / "tiny"
    regimes = pd.read_csv(results / "regimes.csv")
    assert len(regimes) == 4 and regimes["regime"].notna().all()
    assert (results / "phase_diagram.png").is_file() and (results / "tables" / "cost.html").is_file()
    assert not (deployed.folder / "config.yaml").exists()  # the module read config/config.yaml
    # the package both snakemake and the jobs import is the installed one, not the clone's files
    imported = subprocess.run(
        [deployed.python, "-c", "import threeregime; print(threeregime.__file__)"],
        cwd=deployed.folder, env=_clean_env(deployed.venv), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(imported).is_relative_to(deployed.venv), imported
    (linked,) = (deployed.folder / ".snakemake" / "threeregime" / "python").glob("*/threeregime")
    assert linked.resolve() == Path(imported).parent.resolve()  # jobs' PYTHONPATH: that package alone
    assert "Nothing to be done" in deployed.snakemake("-n").stdout
    # the catalog's check, in an environment where the package is installed and nothing else
    lint = deployed.snakemake("--lint", folder=deployed.clone)
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    # the commands that look at a run read config/config.yaml here, as snakemake does
    for command, expected in (("status", "cells: # done 4"), ("cost", "dense_train")):
        looked = subprocess.run(
            [deployed.python, "-m", "threeregime", command],
            cwd=deployed.folder, env=_clean_env(deployed.venv), capture_output=True, text=True,
        )  # fmt: skip
        assert looked.returncode == 0 and expected in looked.stdout, looked.stdout + looked.stderr
    report = deployed.folder / "report.html"
    deployed.snakemake("--report", str(report))
    text = report.read_text()
    categories = ("1. Figures", "Phase diagrams", "Regime maps", "2. Regimes", "5. Cost")
    for needle in (*categories, "Three-regime model"):
        assert needle in text, needle


@pytest.mark.slow
def test_presets_and_overlays_plan_from_the_deployed_folder_as_from_a_clone(deployed, tmp_path):
    data = write_fake_cifar(deployed.folder / "data")  # data.root: data, in the folder snakemake runs in
    preset = ["--configfile", "config/presets/base.yaml", "config/presets/epochs.yaml"]
    stats = _job_stats(deployed.snakemake("-n", *preset).stdout)
    expected = _expected_jobs(_load("epochs", data))
    assert {rule: stats[rule] for rule in expected} == expected
    overlay = ["--configfile", "config/presets/overlays/mnist1d-lr.yaml"]  # the lr knob, 4 values
    in_deployment = _job_stats(deployed.snakemake("-n", *overlay).stdout)
    write_config(tmp_path, DEPLOYED_CONFIG)
    in_clone = _job_stats(snakemake(tmp_path, "-n", "--configfile", str(REPO / overlay[1])).stdout)
    assert in_deployment == in_clone and in_clone["dense_train"] == 4


def _rsync() -> None:
    """snakemake-storage-plugin-fs copies with rsync: install it with apt-get if missing, as
    tests/slurm/up.sh installs Slurm, or skip saying why."""
    pytest.importorskip("snakemake_storage_plugin_fs", reason="pip install -e '.[dev]'")
    if shutil.which("rsync"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "snakemake-storage-plugin-fs needs rsync: missing, and installing it needs root and apt-get"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = ["-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"]
    install = ["apt-get", "install", *quiet, "rsync"]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not shutil.which("rsync"):
        pytest.skip(
            f"rsync (snakemake-storage-plugin-fs needs it) could not be installed: {done.stderr[-300:]}"
        )


COST_KEYS = ["rule", "temperature", "density", "seed", "rseed", "a", "b", "runs", "device"]


@pytest.mark.slow
def test_no_shared_file_system_gives_the_shared_runs_results(deployed, tmp_path):
    """The same project in a fresh folder, every file through a storage provider: nothing is
    written beside it, only declared files reach a job (a packed metrics job reads the local
    copies of its models), and the tables equal the shared run's."""
    _rsync()
    project = tmp_path / "project"
    for part in ("config", "workflow", "profiles"):
        shutil.copytree(deployed.folder / part, project / part, symlinks=True)
    store = tmp_path / "store"
    storage = ["--default-storage-provider", "fs", "--default-storage-prefix", str(store)]
    deployed.snakemake(*storage, "--shared-fs-usage", "none", folder=project)
    assert not (project / "results").exists()  # every output went to storage
    shared, stored = deployed.folder / "results" / "tiny", store / "results" / "tiny"
    for table in ("metrics.csv", "models.csv", "cells.csv", "regimes.csv", "advice.csv"):
        assert (stored / table).read_bytes() == (shared / table).read_bytes(), table
    metrics = pd.read_csv(stored / "metrics.csv")
    assert sorted(metrics["density"]) == [0.2, 0.2, 0.6, 0.6] and metrics["mc"].notna().all()
    # the cost table read every job's benchmark and device: declared, so retrieved from storage
    cost = [pd.read_csv(folder / "cost.csv")[COST_KEYS].astype(str) for folder in (shared, stored)]
    # one job per dense model and step: 1 prepare_data, 2 x (dense_train, prune, retrain, metrics)
    assert len(cost[1]) == 9 and (cost[1]["device"] == "cpu").all()
    assert sorted(map(tuple, cost[1].values)) == sorted(map(tuple, cost[0].values))
    assert "Nothing to be done" in deployed.snakemake("-n", *storage, folder=project).stdout


def test_collect_declares_every_jobs_benchmark_under_a_storage_provider(tmp_path):
    """Under a storage provider collect's inputs are also the benchmark of every compute job in
    the plan and the log of every job run on runtime.device (the cost table reads them), for
    every way jobs are laid out: packed or not, weight rewinding, iterative pruning."""
    pytest.importorskip("snakemake_storage_plugin_fs", reason="pip install -e '.[dev]'")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    storage = ["--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "store")]
    write_config(tmp_path, {"runtime": {"retrain_pack": "none"}}, "unpacked.yaml")
    overlays = REPO / "presets" / "overlays"
    for extra in ([], ["unpacked.yaml"], [overlays / "mnist1d-rewind.yaml"], [overlays / "mnist1d-imp.yaml"]):
        configfiles = ["--configfile", *map(str, extra)] if extra else []
        plan = snakemake(tmp_path, "-n", *storage, *configfiles).stdout
        stats = _job_stats(plan)
        inputs = re.search(r"^rule collect:\n    input: (.*)$", plan, re.M).group(1).split(", ")
        benchmarks = [path for path in inputs if path.endswith(".tsv (retrieve from storage)")]
        logs = [path for path in inputs if path.endswith(".log (retrieve from storage)")]
        compute = ["prepare_data", "dense_train", "rewind", "prune", "retrain", "metrics"]
        assert len(benchmarks) == sum(stats.get(rule, 0) for rule in compute), extra
        assert len(logs) == sum(stats.get(rule, 0) for rule in compute[1:] if rule != "prune"), extra


def test_kubernetes_and_google_batch_profiles_parse(tmp_path):
    """`snakemake -n --profile profiles/<engine>`: the executor plugin accepts every key and the
    GPU rules carry the resources the plugin reads (the profiles' cloud storage is swapped for
    fs storage: an S3 or GCS provider needs credentials even for a dry run)."""
    write_config(tmp_path, TINY_CONFIG)
    storage = ["--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "store")]
    expected = {"kubernetes": "gpu=0, gpu_manufacturer=nvidia, scale=0", "googlebatch": "nvidia_gpu=1"}
    for engine, resources in expected.items():
        pytest.importorskip(f"snakemake_executor_plugin_{engine}", reason="pip install -e '.[dev]'")
        plan = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / engine), *storage).stdout
        block = plan[plan.index("rule dense_train:") :].split("\n\n")[0]
        assert resources in block, (engine, block)
        assert "Job stats" in plan


@pytest.mark.slow
def test_a_deployed_run_holds_the_run_lock(deployed):
    """Snakemake runs only the deploying Snakefile's onstart; the workflow chains its own onto it,
    so a second live run of the same results is refused in a deployed project too."""
    write_config(deployed.folder / "config", {"run_name": "locked"}, "locked.yaml")
    command = [deployed.python, "-m", "snakemake", "--cores", "1", "--configfile", "config/locked.yaml"]
    log = deployed.folder / "locked.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            command, cwd=deployed.folder, env=_clean_env(deployed.venv), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    record = deployed.folder / locks.RUN_LOCKS / "run-locked.json"
    while first.poll() is None and not record.exists():
        time.sleep(0.05)  # until the first run holds its run lock
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        assert first.poll() is None, log.read_text()[-3000:]
        second = deployed.snakemake("--configfile", "config/locked.yaml", check=False)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "results/locked is being written by a running snakemake (pid " in output, output[-3000:]
        assert "Select jobs to execute" not in output, "refused before any job"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
