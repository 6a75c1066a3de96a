"""The MovieLens study: two-tower retrieval against measured baselines on ML-1M/ML-100K.

data (files, checksums, protocol, the prepared-data cache) -> towers, losses, train (the
two-tower) and baselines -> evaluate (ranking, metrics, latency) -> steps (the cached
steps a run's notebooks call) -> report (gathers runs into reports/EVALUATION_REPORT.md);
bench times the speed targets.
"""
