"""threeregime: the three-regime model of network pruning (Zhou et al., ICML 2023) as a library.

Stages: data -> models -> train (dense) -> prune -> train (retrain, masks fixed) -> metrics /
hessian -> regimes -> plot. The Snakemake workflow in ``workflow/`` calls ``threeregime.cli``.
"""

__version__ = "0.2.0"
