"""`modescope lab run` and `modescope lab report`: the overoptimization lab on the command line.

Registered in the main command as `app.add_typer(lab_app, name="lab")`. torch, peft and the lab modules are
imported inside the commands, so `modescope --help` stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import make_console, user_errors
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy

if TYPE_CHECKING:
    from modescope.lab.train import LabConfig
    from modescope.models.safety import LoadPolicy

lab_app = typer.Typer(
    help="Optimize a model against a reward (LoRA, RLOO, KL penalty) and watch collapse and attractors appear.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def reproduce_command(config: LabConfig, out: Path, prompts_file: Path | None) -> str:
    """The `modescope lab run` command line that makes this run again (every option spelled out)."""
    words = ["modescope", "lab", "run", "--out", str(out), "--model", config.model, "--reward", config.reward]
    words += ["--kl-coef", repr(config.kl_coef), "--lr", repr(config.learning_rate), "--steps", str(config.steps)]
    words += ["--batch-size", str(config.batch_size), "--group-size", str(config.group_size)]
    words += ["--max-tokens", str(config.max_tokens), "--seed", str(config.seed)]
    words += ["--checkpoint-every", str(config.checkpoint_every), "--lora-rank", str(config.lora_rank)]
    words += ["--probe-samples", str(config.probe_samples)]
    if config.typical_reference is not None:
        words += ["--typical-reference", config.typical_reference]
    if not config.number_probe:
        words.append("--no-number-probe")
    if prompts_file is not None:
        words += ["--prompts-file", str(prompts_file)]
    return shlex.join(words)


@lab_app.command("run")
def run(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for checkpoints, curves.jsonl and run.json.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The start model (preset, folder, HF id).")] = (
        "smollm2-135m-instruct"
    ),
    reward: Annotated[
        str,
        typer.Option(
            help="sentiment (VADER), format, typical (mean token log-prob under the start model), module:function, "
            "or a weighted sum: typical+0.5*sentiment."
        ),
    ] = "sentiment",
    typical_reference: Annotated[
        str | None,
        typer.Option(help="Reference model of the typical term, with the same tokenizer (default: the start model)."),
    ] = None,
    kl_coef: Annotated[float, typer.Option(help="KL penalty to the start model; 0 = pure reward maximization.")] = 0.05,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (AdamW on the LoRA weights).")] = 3e-3,
    steps: Annotated[int, typer.Option(help="Optimization steps.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Completions per step.")] = 8,
    group_size: Annotated[int, typer.Option(help="Completions per prompt (leave-one-out baseline).")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Generation length in tokens.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the adapter's initialization, the prompt order and sampling.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Save the adapter and probe every N steps.")] = 20,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (alpha is twice the rank).")] = 8,
    probe_samples: Annotated[int, typer.Option(help="Completions per held prompt at each checkpoint.")] = 4,
    number_probe: Annotated[bool, typer.Option(help="Probe the exact 0..100 distribution at each checkpoint.")] = True,
    prompts_file: Annotated[
        Path | None, typer.Option(help="Training prompts, one a line (default: built-in stories).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a lab run already in --out.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Optimize MODEL against REWARD with LoRA adapters; checkpoints and collapse curves go to --out."""
    console = make_console()
    with user_errors():
        from modescope.errors import ModescopeError
        from modescope.lab.prompts import STORY_OPENINGS, read_prompts
        from modescope.lab.rewards import parse_reward
        from modescope.lab.train import LabConfig, prepare_folder

        config = LabConfig(
            model=model,
            reward=reward,
            typical_reference=typical_reference,
            kl_coef=kl_coef,
            learning_rate=lr,
            steps=steps,
            batch_size=batch_size,
            group_size=group_size,
            max_tokens=max_tokens,
            seed=seed,
            checkpoint_every=checkpoint_every,
            lora_rank=lora_rank,
            lora_alpha=2 * lora_rank,
            probe_samples=probe_samples,
            number_probe=number_probe,
        )
        config.check()
        prompts = read_prompts(prompts_file) if prompts_file is not None else STORY_OPENINGS
        spec = parse_reward(reward)
        if typical_reference is not None and not spec.has_typical:
            raise ModescopeError(f"--typical-reference needs the typical term in the reward (got '{reward}')")
        prepare_folder(out, overwrite)  # before the model loads: an unwritable folder fails at once
        # the opt-ins stay out of the reproduce command: whoever reruns it decides what to trust
        command = reproduce_command(config, out, prompts_file)
        _run(config, out, prompts, spec, command, device, console, load_policy(trust_remote_code, allow_pickle))


def _run(
    config: LabConfig,
    out: Path,
    prompts: list[str],
    reward: Any,
    command: str,
    device: str,
    console: Any,
    policy: LoadPolicy | None = None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modescope import models
    from modescope.errors import ModescopeError
    from modescope.lab.train import check_same_tokenizer, run_lab, torch_threads_from_env
    from modescope.models.hf import HFBackend

    torch_threads_from_env()
    opt_ins = policy.for_load() if policy is not None else {}
    with console.status(f"loading {config.model}"):
        backend = models.load(config.model, device=device, **opt_ins)
    if not isinstance(backend, HFBackend):
        raise ModescopeError(f"model '{config.model}' cannot be trained; use a transformers model")
    reference: HFBackend | None = None
    if config.typical_reference is not None:
        with console.status(f"loading {config.typical_reference}"):
            loaded = models.load(config.typical_reference, device=device, **opt_ins)
        if not isinstance(loaded, HFBackend):
            raise ModescopeError(f"the typicality reference '{config.typical_reference}' is not a transformers model")
        reference = loaded
        reference.model.requires_grad_(False)
        check_same_tokenizer(backend, reference)  # before the start model's first probe
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[note]}"), console=console, transient=True) as progress:
        task = progress.add_task("optimizing", total=config.steps, note="")

        def on_step(record: dict[str, Any]) -> None:
            if record["kind"] == "skipped":
                console.print(f"[yellow]step {record['step']} skipped[/]: {record['reason']}")
                note = "skipped"
            else:
                note = f"reward {record['reward']:+.3f}  KL {record['kl_nats']:.2f} nats  H {record['entropy_bits']:.2f} bits"
            progress.update(task, completed=record["step"], description="optimizing", note=note)

        def on_probe(step: int) -> None:
            progress.update(task, description=f"probing step {step}")

        result = run_lab(
            config,
            out,
            backend,
            reward,
            prompts=prompts,
            on_step=on_step,
            on_probe=on_probe,
            command=command,
            overwrite=True,
            reference=reference,
        )
    for record in result.checkpoints:
        m = record["metrics"]
        console.print(
            f"step {record['step']:>4}: reward {m['reward']:+.3f}  typicality {m['typicality_nats']:.2f} nats  entropy {m['entropy_bits']:.2f} bits  "
            f"distinct-2 {m['distinct_2']:.3f}  embedding diversity {m['embedding_diversity']:.3f}  "
            f"basin share {m['basin_share']:.2f}  KL {m['kl_nats']:.2f} nats  perplexity ratio {m['ppl_ratio']:.2f}"
        )
    if result.skipped:
        console.print(
            f"[yellow]{len(result.skipped)} step(s) skipped[/] (the reward failed): {[s['step'] for s in result.skipped]}"
        )
    console.print(
        f"{result.steps_done} steps in {result.train_seconds:.0f} s ({result.steps_per_minute:.1f} steps/min, probes "
        f"{result.probe_seconds:.0f} s); curves in {out / 'curves.jsonl'}; `modescope lab report {out}` draws them"
    )


@lab_app.command("report")
def report(
    runs: Annotated[list[Path], typer.Argument(help="Lab run folders (several are drawn on the same axes).")],
    png: Annotated[Path | None, typer.Option(help="Curve plot (default: RUN/curves.png of the first run).")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Page of samples per checkpoint (default: RUN/report.html).")
    ] = None,
) -> None:
    """Plot each metric against step and against KL from the start model; write sample completions per checkpoint."""
    with user_errors():
        from modescope.lab.report import read_run, render_html, render_plot

        loaded = [read_run(folder) for folder in runs]
        png = png if png is not None else runs[0] / "curves.png"
        html = html if html is not None else runs[0] / "report.html"
        render_plot(loaded, png)
        render_html(loaded, html, png)
        make_console().print(f"wrote {png} and {html}")
