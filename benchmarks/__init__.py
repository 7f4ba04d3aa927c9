"""Reproducible benchmarks of pubsubpull: ``python -m benchmarks [--quick]`` writes BENCHMARKS.md.

Each benchmark is a module here (``capture``, ``writers``, ``delivery``, ``pull``,
``memory``) with ``run(quick: bool, dry_run: bool) -> str`` returning a markdown section;
``__main__`` prepares the database and calls them in order; ``harness`` holds the helpers they
share.
"""
