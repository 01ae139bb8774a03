"""Benchmarks of vmbackup side by side with the tools a user would otherwise pick (``python -m bench.run``)."""
