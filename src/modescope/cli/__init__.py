"""The `modescope` command. Thin: parses options, calls the library, prints.

This module builds the typer app from the command modules of the package: one module per command group, all
sharing `common` (the bottom of the CLI layer, which imports no other `modescope.cli` module). Heavy modules
(torch, transformers, the probes) are imported inside the commands, so `modescope --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from modescope.cli import (
    attractor,
    distribution,
    forks,
    frontier,
    lab,
    models,
    multiverse,
    sampling,
    serve,
    suites,
    temperature,
    verbalized,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="modescope",
    help="Observe, measure and visualize mode collapse and attractors in language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The order here is the order of `modescope --help`.
app.command()(distribution.dist)
app.command()(sampling.sample)
app.command()(sampling.diversity)
app.command(name="temperature")(temperature.temperature_command)
app.command()(attractor.attractor)
app.command()(forks.forks)
app.command()(multiverse.multiverse)
app.command()(models.models)
app.command()(serve.serve)
app.add_typer(lab.lab_app, name="lab")
app.command("run")(suites.run_command)
app.command("suites")(suites.suites_command)
app.command("runs")(suites.runs_command)
app.command("export")(suites.export_command)
app.command("report")(suites.report_command)
app.command("frontier")(frontier.frontier_command)
app.command("verbalized")(verbalized.verbalized_command)


def main() -> None:
    """Entry point of the `modescope` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
