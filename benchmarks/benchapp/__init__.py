"""Models the benchmarks write to: one untracked, one tracked by pubsubpull, one by pghistory."""
