"""Typed configuration: the settings dataclasses, the schema, loading and checking config files,
the experiment's grids (ExperimentConfig) and the JSON spec of every job."""
