"""The numeric environment a result was computed in (device, CPU instruction set or GPU, threads,
library versions, fast paths; measured by threeregime.compute.runtime.numeric_environment), as
one readable line, and the environments of a result's lineage. Torch-free: the analysis jobs
label and compare environments without importing torch."""

from __future__ import annotations


def environment_label(env: dict) -> str:
    """One short readable line per environment, e.g. 'cpu AVX2, 1 thread, torch 2.14.1, fp32'."""
    device = env["device"] + (f" {env['cpu']}" if env.get("cpu") else "")
    threads = f"{env['threads']} thread" + ("s" if env["threads"] != 1 else "")
    numerics = [env["amp"] if env["amp"] != "none" else "fp32"]
    numerics += [name for name in ("tf32", "channels_last", "compile") if env.get(name)]
    versions = f"torch {env['torch']}" + (f", cuda {env['cuda']}" if env.get("cuda") else "")
    return f"{device}, {threads}, {versions}, {'+'.join(numerics)}"


def merge_environments(*groups: list[dict]) -> list[dict]:
    """The distinct environments of a result's lineage (its own and its inputs'), in order."""
    merged: list[dict] = []
    for group in groups:
        for env in group:
            if env not in merged:
                merged.append(env)
    return merged
