"""`--prompts-file` on the probe commands (`dist`, `sample`, `temperature`, `attractor`, `forks`,
`multiverse`): the command's probe over a whole prompt set.

The command's options become a one-probe suite that runs through the suite runner, so a prompt set from the
command line is stored per prompt and model in the results store like a suite's (a killed run continues with
`--resume`, and a rerun comes from the cache), and ends with the aggregates over the prompts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modescope.cli.common import check_chat_options, make_console, prepare_output
from modescope.cli.suites import print_failures, run_with_progress
from modescope.errors import ModescopeError
from modescope.load_options import load_policy

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.console import Console

    from modescope.models.safety import LoadPolicy


def prompt_set_given(
    prompts_file: str | None,
    prompt: str | None,
    prompt_file: Path | None,
    template: str | None,
    store_path: Path | None,
    resume: bool,
) -> bool:
    """Whether the command runs over a prompt set (--prompts-file), refusing options that mix the two ways."""
    if prompts_file is None:
        if template is not None or store_path is not None or resume:
            raise ModescopeError("--template, --store and --resume go with --prompts-file (a prompt set)")
        return False
    if prompt is not None or prompt_file is not None:
        raise ModescopeError("give one prompt (--prompt or --prompt-file) or a prompt set (--prompts-file), not both")
    return True


def refuse_in_prompt_set(used: dict[str, bool]) -> None:
    """Refuse the first single-prompt option of `used` that was given (its value is True)."""
    given = [option for option, on in used.items() if on]
    if given:
        raise ModescopeError(
            f"{given[0]} is for a single prompt; a --prompts-file run writes the prompt-set page (--html) and --json"
        )


def over_prompt_set(
    kind: str,
    settings: dict[str, Any],
    model: list[str] | None,
    chat: bool,
    system: str | None,
    json_path: Path | None,
    html: Path | None,
    device: str,
    dtype: str,
    options: dict[str, Any],
) -> None:
    """The command's probe over every prompt of --prompts-file; `options` are the command's own arguments, for
    the prompt-set and server options every command shares."""
    from modescope.models import DEFAULT_MODELS

    check_chat_options(chat, system, settings.get("prefill", ""))
    prepare_output(json_path, "--json")
    prepare_output(html, "--html")
    server = {key: options[key] for key in ("tokenizer", "max_concurrency", "max_logprobs")}
    run_prompt_set(
        kind,
        settings,
        options["prompts_file"],
        models=model or list(DEFAULT_MODELS),
        chat=chat,
        system=system,
        template=options["template"],
        store_path=options["store_path"],
        resume=options["resume"],
        json_path=json_path,
        html=html,
        device=device,
        dtype=dtype,
        server=server,
        policy=load_policy(options["trust_remote_code"], options["allow_pickle"]),
        console=make_console(),
    )


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
    print_output: Callable[[dict[str, Any], Console], None] | None = None,
) -> int:
    """Run the command's probe (its kind and settings, as suite keys) over the prompt set (a file, or the
    list `prompts`), store it, print the aggregates (or the probe's output through `print_output`) and write
    --json (the aggregate with every prompt's numbers), --html (the prompt-set page; a frontier's interactive
    page) and --png (the metrics figure; a frontier's plot). `policy` holds --trust-remote-code and
    --allow-pickle. Returns the run id."""
    from pydantic import ValidationError

    from modescope.store import Store
    from modescope.suites import schema
    from modescope.suites.aggregate import print_aggregate
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
        run_id = run_with_progress(plan, store, resume, None, device, dtype, console, policy=policy)
        failures = store.failures(run_id)
        if failures:
            print_failures(failures, run_id, store, console)
            raise typer.Exit(1)
        output = store.probe_output(run_id, kind)
        console.print(f"run {run_id}: {len(plan.probes[0].prompts or [])} prompts, stored in {store.path}")
    (print_output or print_aggregate)(output.payload, console)
    if json_path is not None:
        from modescope.store.store import _dumps

        json_path.write_text(_dumps(output.payload, indent=1), encoding="utf-8")
        console.print(f"wrote {json_path}")
    frontier = kind == "frontier"
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
