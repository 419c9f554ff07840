"""`--prompts-file` on the probe commands (`dist`, `sample`, `temperature`, `attractor`, `forks`,
`multiverse`): the command's probe over a whole prompt set.

The command's options become a one-probe suite that runs through the suite runner, so a prompt set from the
command line is stored per prompt and model in the results store like a suite's (a killed run continues with
`--resume`, and a rerun comes from the cache), and ends with the aggregates over the prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from modescope.errors import ModescopeError

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.models.safety import LoadPolicy

PromptsFile = Annotated[
    str | None,
    typer.Option(
        "--prompts-file",
        help="Run over a prompt set instead of one prompt: a .jsonl file (id, prompt, other keys kept), a .txt file "
        "(one prompt per line), or a built-in set (open-ended). Stored per prompt and model in --store.",
        rich_help_panel="Prompt sets",
    ),
]
SetStore = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Results store of a --prompts-file run (default ./modescope-results).",
        rich_help_panel="Prompt sets",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(help="Continue an interrupted --prompts-file run of the same probe.", rich_help_panel="Prompt sets"),
]
Template = Annotated[
    str | None,
    typer.Option(help='Wrap each prompt of the set, e.g. "Q: ${prompt}\\nA:".', rich_help_panel="Prompt sets"),
]


def run_prompt_set(
    kind: str,
    settings: dict[str, Any],
    prompts_file: str | None,
    *,
    prompts: list[str] | None = None,
    png: Path | None = None,
    models: list[str],
    chat: bool = False,
    system: str | None = None,
    template: str | None = None,
    store_path: Path | None = None,
    resume: bool = False,
    json_path: Path | None = None,
    html: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    server: dict[str, Any] | None = None,
    policy: LoadPolicy | None = None,
    console: Console,
) -> int:
    """Run the command's probe (its kind and settings, as suite keys) over the prompt set (a file, or the
    list `prompts`), store it, print the aggregates and write --json (the aggregate with every prompt's
    numbers), --html (the prompt-set page; a frontier's interactive page) and --png (the metrics figure; a
    frontier's plot). `policy` holds --trust-remote-code and --allow-pickle. Returns the run id."""
    from modescope.store import Store
    from modescope.suites import schema
    from modescope.suites.aggregate import print_aggregate
    from modescope.suites.commands import _print_failures, _run_with_progress
    from modescope.suites.runner import plan_entries

    if len(set(models)) != len(models):
        raise ModescopeError(f"a model is listed twice ({', '.join(models)}); name each model once")
    probe = {"name": kind, "kind": kind, "prompts_file": prompts_file, "prompts": prompts, "template": template}
    probe |= settings
    data = {"name": f"{kind}-prompt-set", "models": [{"name": m, "chat": chat, "system": system} for m in models]}
    data["probes"] = [{k: v for k, v in probe.items() if v is not None}]
    try:
        suite = schema.Suite.model_validate(data)
    except ValidationError as exc:
        raise ModescopeError(_option_error(exc)) from None
    text = json.dumps(data, indent=1)
    server = server or {}
    plan = plan_entries(suite, Path.cwd(), text, list(suite.models), min_models=1, **server)
    with Store(store_path) as store:
        run_id = _run_with_progress(plan, store, resume, None, device, dtype, console, policy=policy)
        failures = store.failures(run_id)
        if failures:
            _print_failures(failures, run_id, store, console)
            raise typer.Exit(1)
        output = store.probe_output(run_id, kind)
        console.print(f"run {run_id}: {len(plan.probes[0].prompts or [])} prompts, stored in {store.path}")
    frontier = kind == "frontier"
    if frontier:
        from modescope.remedies.frontier_cli import print_frontier

        print_frontier(output.payload, console)
    else:
        print_aggregate(output.payload, console)
    if json_path is not None:
        from modescope.store.store import _dumps

        json_path.write_text(_dumps(output.payload, indent=1), encoding="utf-8")
        console.print(f"wrote {json_path}")
    for path, name in (
        (html, "frontier.html" if frontier else "prompts.html"),
        (png, "frontier.png" if frontier else "metrics.png"),
    ):
        if path is not None and name in output.artifacts:
            path.write_bytes(output.artifacts[name].data)
            console.print(f"wrote {path}")
    return run_id


def _option_error(error: ValidationError) -> str:
    """A validation error of the options, named as the command line names them."""
    first = error.errors()[0]
    key = next((str(p) for p in reversed(first["loc"]) if isinstance(p, str) and p not in ("probes",)), "")
    option = "--" + key.replace("_", "-") if key else "an option"
    return f"{option}: {str(first['msg']).removeprefix('Value error, ')}"
