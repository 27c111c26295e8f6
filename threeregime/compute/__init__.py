"""The computation of one job, in torch: data, models, training, pruning, and the loss-landscape
metrics of retrained models."""
