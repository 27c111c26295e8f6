"""From per-pair metrics to maps, in pandas: cells, thresholds and regimes, their confidence,
advice and model selection, adaptive planning."""
