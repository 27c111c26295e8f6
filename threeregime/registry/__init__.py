"""The registries: one declarative, torch-free entry per knob, metric, pruning method, model and
dataset. Every other layer derives its facts from them (the schema's enums and the entries'
settings, validation, specs, tables, figures)."""
