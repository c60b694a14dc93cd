"""lrlab.bench: the benchmark lab (problems, runner, store, sweeps, reports, CLI)."""
