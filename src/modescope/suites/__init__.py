"""Experiment suites: declarative TOML files of probes, run against a results store."""
