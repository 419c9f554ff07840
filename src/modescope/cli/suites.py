"""`modescope run`, `suites`, `runs`, `export` and `report`: suites against the results store.

Only typer and light modules are imported at the top; everything heavy is imported inside the commands, so the
CLI starts fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import make_console, prepare_output, user_errors
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.models.safety import LoadPolicy
    from modescope.store import Store
    from modescope.suites.units import Executor, UnitFailure

StorePath = Annotated[
    Path | None,
    typer.Option("--store", help="Results store: a folder or a .sqlite file (default ./modescope-results)."),
]
RunId = Annotated[str, typer.Argument(help="Run id (see `modescope runs`), or 'latest'.")]


class ExportFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"
    json = "json"


def _open_store(path: Path | None) -> Store:
    from modescope.store import Store

    return Store(path)


def _run_id(store: Store, run: str) -> int:
    from modescope.errors import ModescopeError

    if run == "latest":
        latest = store.latest_run()
        if latest is None:
            raise ModescopeError(f"the store {store.path} holds no run yet; start one with `modescope run essay`")
        return latest
    if not run.isdigit():
        raise ModescopeError(f"'{run}' is not a run id; give a number from `modescope runs` or 'latest'")
    store.run(int(run))  # a clear error for an unknown id
    return int(run)


def run_command(
    suite: Annotated[str, typer.Argument(help="A built-in suite (see `modescope suites`) or a TOML file.")],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Run on these models instead of the suite's (a preset, folder, .gguf file, HF id or NAME@URL); "
            "repeat.",
        ),
    ] = None,
    store_path: StorePath = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest unfinished run of this suite.")] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Recompute only this probe (repeat), in the suite's latest run.")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the HTML report here when the run ends.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray", help="Fan prompt-set probes out over a local Ray cluster: one worker per model holds its weights."
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this existing Ray cluster (e.g. ray://head:10001 or auto) instead; implies --ray."),
    ] = None,
) -> None:
    """Run an experiment suite: every probe on every model, stored as it finishes, cached by content.

    Probes over a prompt set are stored prompt by prompt and model by model: a killed run resumed with --resume
    computes only the missing units. With --ray they are computed on a Ray cluster; the store stays here.
    --trust-remote-code and --allow-pickle apply to every model of the run: a suite file cannot ask for them."""
    with user_errors():
        from modescope.suites.runner import plan_suite

        plan = plan_suite(suite, model, tokenizer=tokenizer, max_concurrency=max_concurrency, max_logprobs=max_logprobs)
        prepare_output(report, "--report")
        console = make_console()
        policy = load_policy(trust_remote_code, allow_pickle)
        with (
            _open_store(store_path) as store,
            _executor(ray or ray_address is not None, ray_address, device, dtype, policy) as executor,
        ):
            run_id = run_with_progress(plan, store, resume, only, device, dtype, console, executor, policy)
            failures = store.failures(run_id)
            if failures:
                print_failures(failures, run_id, store, console)
                raise typer.Exit(1)
            console.print(f"run {run_id} finished; stored in {store.path}")
            print_overview(store, run_id, console)
            if report is not None:
                from modescope.viz.report_html import write_report

                write_report(store, run_id, report)
                console.print(f"wrote {report}")


@contextmanager
def _executor(
    ray: bool, address: str | None, device: str, dtype: str, policy: LoadPolicy | None = None
) -> Iterator[Executor | None]:
    """The Ray executor when asked for (started before any model loads, closed however the run ends)."""
    if not ray:
        yield None
        return
    from modescope.suites.ray_executor import RayExecutor

    executor = RayExecutor(address=address, device=device, dtype=dtype, policy=policy)
    try:
        yield executor
    finally:
        executor.close()


def print_failures(failures: list[dict[str, Any]], run_id: int, store: Store, console: Console) -> None:
    """The units of a run that failed, and how to compute only them again."""
    from rich.table import Table

    table = Table(title=f"run {run_id}: {len(failures)} units failed", title_justify="left")
    for column in ("probe", "prompt", "model", "attempts", "error"):
        table.add_column(column)
    for f in failures:
        table.add_row(f["probe"], f["prompt_id"], f["model"], str(f["attempts"]), f["error"])
    console.print(table)
    console.print(
        f"run {run_id} is stored in {store.path} with everything else that finished; "
        "rerun with --resume to compute only the missing units"
    )


def run_with_progress(
    plan: Any,
    store: Store,
    resume: bool,
    only: list[str] | None,
    device: str,
    dtype: str,
    console: Console,
    executor: Executor | None = None,
    policy: LoadPolicy | None = None,
) -> int:
    """Run the planned suite with a progress bar per probe (and its units); returns the run id."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from modescope.suites.runner import RunEvents, run_suite

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        overall = bar.add_task(f"suite {plan.suite.name}", total=None)
        current: dict[str, Any] = {}

        def started(name: str, index: int, total: int) -> None:
            bar.update(overall, total=total, completed=index)
            current["task"] = bar.add_task(f"  {name}", total=None)
            current["name"] = name

        def progress(message: str) -> None:
            if "task" in current:
                bar.update(current["task"], description=f"  {current['name']}: {message}")

        def finished(name: str, seconds: float, cached: bool) -> None:
            bar.remove_task(current.pop("task"))
            bar.advance(overall)
            source = "from the cache" if cached else f"{seconds:.1f} s"
            bar.console.print(f"[green]✓[/] {name} ({source})")

        def units(name: str, done: int, total: int) -> None:
            if "task" in current:
                bar.update(current["task"], total=total, completed=done)

        def failed(failure: UnitFailure) -> None:
            unit = failure.unit
            bar.console.print(f"[red]✗[/] {unit.probe} / {unit.prompt_id} / {unit.model}: {failure.error}")

        events = RunEvents(started, progress, finished, lambda name: progress(f"loading {name}"), units, failed)
        return run_suite(
            plan,
            store,
            resume=resume,
            only=only,
            device=device,
            dtype=dtype,
            events=events,
            executor=executor,
            policy=policy,
        )


def print_overview(store: Store, run_id: int, console: Console) -> None:
    """The headline numbers of a stored run, bounded distributions marked as bounds."""
    from rich.table import Table

    metrics = store.metrics(run_id)
    if metrics.empty:
        return
    table = Table(title=f"run {run_id}: headline numbers", title_justify="left")
    for column in ["probe", "model", "metric", "value"]:
        table.add_column(column, justify="right" if column == "value" else "left")
    keep = {"top1", "top1_share", "entropy_bits", "distinct_2", "embedding_diversity", "basin_share", "tau_star_token"}
    keep |= {"tau_star_outcome", "root_entropy_bits"}
    # a distribution of a model behind a top-k server holds bounds: its numbers come from the lower bounds
    bounded = {
        (p["name"], r.get("model"))
        for p in store.probes(run_id)
        if p["kind"] == "distribution"
        for r in store.probe_output(run_id, p["name"]).payload.get("results", [])
        if isinstance(r, dict) and r.get("bounds")
    }
    for row in metrics[metrics["metric"].isin(keep)].itertuples():
        value = row.text if isinstance(row.text, str) and row.text else f"{row.value:.3g}"
        value += " (bounds)" if (row.probe, row.model) in bounded else ""
        table.add_row(str(row.probe), str(row.model), str(row.metric), value)
    console.print(table)


def suites_command() -> None:
    """List the built-in suites."""
    from rich.table import Table

    from modescope.suites.schema import builtin_suites, load_suite

    table = Table(title="Built-in suites (run one with `modescope run NAME`)", title_justify="left")
    for column in ["name", "probes", "models", "description"]:
        table.add_column(column)
    for name in builtin_suites():
        suite, _, _ = load_suite(name)
        table.add_row(name, str(len(suite.probes)), ", ".join(m.name for m in suite.models), suite.description)
    make_console().print(table)


def runs_command(store_path: StorePath = None) -> None:
    """List the runs in the store."""
    from rich.table import Table

    from modescope.viz.report_html import utc_time

    with user_errors(), _open_store(store_path) as store:
        runs = store.runs()
        table = Table(title=f"Runs in {store.path}", title_justify="left")
        for column in ["id", "suite", "status", "started", "finished", "probes", "models"]:
            table.add_column(column)
        for row in runs.to_dict("records"):
            finished = row["finished"] if row["finished"] == row["finished"] else None  # NaN when unfinished
            cells = [row["id"], row["suite"], row["status"], utc_time(float(row["started"])), utc_time(finished)]
            table.add_row(*map(str, cells), str(row["probes"]), ", ".join(row["models"]))
        make_console().print(table)


def export_command(
    run: RunId,
    format: Annotated[ExportFormat, typer.Option("--format", help="parquet, csv or json.")] = ExportFormat.csv,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: run-ID.FORMAT).")
    ] = None,
    store_path: StorePath = None,
) -> None:
    """Export a run's metrics (json: also every probe's settings and full result)."""
    with user_errors(), _open_store(store_path) as store:
        run_id = _run_id(store, run)
        path = output or Path(f"run-{run_id}.{format.value}")
        prepare_output(path, "--output")
        store.export(run_id, format.value, path)
        make_console().print(f"wrote {path}")


def report_command(
    run: RunId,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
    pdf: Annotated[
        Path | None, typer.Option(help="Also print the report to this PDF (needs headless Chromium).")
    ] = None,
    store_path: StorePath = None,
) -> None:
    """Write one self-contained HTML report of a run: overview, every probe's metrics, figures and views."""
    with user_errors(), _open_store(store_path) as store:
        from modescope.viz.report_html import write_pdf, write_report

        run_id = _run_id(store, run)
        prepare_output(output, "--output")
        prepare_output(pdf, "--pdf")
        write_report(store, run_id, output)
        make_console().print(f"wrote {output}")
        if pdf is not None:
            write_pdf(output, pdf)
            make_console().print(f"wrote {pdf}")
