"""The `modescope` command. Thin: parses options, calls the library, prints.

Heavy modules (torch, transformers, the probes) are imported inside the commands, so `modescope --help`
answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.errors import ModescopeError
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, ServerOptions, Tokenizer
from modescope.suites.prompt_set_command import PromptsFile, Resume, SetStore, Template

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from modescope.models.base import Backend, ChatPrompt
    from modescope.models.safety import LoadPolicy
    from modescope.probes.distribution import DistributionResult

app = typer.Typer(
    name="modescope",
    help="Observe, measure and visualize mode collapse and attractors in language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LeadingSpace(StrEnum):
    optional = "optional"
    required = "required"
    none = "none"


class Tokenizations(StrEnum):
    all = "all"
    canonical = "canonical"


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user's mistake as one clear line and exit with code 2, without a traceback."""
    try:
        yield
    except ModescopeError as exc:
        _console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def _prepare_output(path: Path | None, what: str) -> None:
    """Refuse an output path that cannot be written before any model time is spent."""
    if path is None:
        return
    if path.is_dir():
        raise ModescopeError(f"{what} path '{path}' is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModescopeError(f"cannot create the folder for {what} '{path}': {exc.strerror}") from exc


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    from modescope.probes.candidates import read_text_file

    if (prompt is None) == (prompt_file is None):
        raise ModescopeError("give exactly one of --prompt and --prompt-file")
    text = prompt if prompt is not None else read_text_file(prompt_file, "prompt file")  # type: ignore[arg-type]
    if not text:
        raise ModescopeError("the prompt is empty; give a non-empty prompt")
    return text


def _prompt(
    prompt: str | None, prompt_file: Path | None, chat: bool, system: str | None = None, prefill: str = ""
) -> str | ChatPrompt:
    """The prompt the options describe: plain text, or a chat prompt rendered through each model's template."""
    from modescope.models.base import ChatPrompt

    text = _read_prompt(prompt, prompt_file)
    _check_chat_options(chat, system, prefill)
    return ChatPrompt(text, system, prefill) if chat else text


def _check_chat_options(chat: bool, system: str | None, prefill: str) -> None:
    if not chat and (system is not None or prefill):
        raise ModescopeError("--system and --prefill need --chat")


def _prompt_set_given(
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


def _refuse_in_prompt_set(used: dict[str, bool]) -> None:
    given = [option for option, on in used.items() if on]
    if given:
        raise ModescopeError(
            f"{given[0]} is for a single prompt; a --prompts-file run writes the prompt-set page (--html) and --json"
        )


def _over_prompt_set(
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
    """The command's probe over every prompt of --prompts-file (see suites/prompt_set_command.py); `options`
    are the command's own arguments, for the prompt-set and server options every command shares."""
    from modescope.models import DEFAULT_MODELS
    from modescope.suites.prompt_set_command import run_prompt_set

    _check_chat_options(chat, system, settings.get("prefill", ""))
    _prepare_output(json_path, "--json")
    _prepare_output(html, "--html")
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
        console=_console(),
    )


def _candidates(
    integers: tuple[int, int] | None, choices: list[str] | None, choices_file: Path | None, limit: int
) -> list[str]:
    from modescope.probes import candidates as cands

    given = sum(x is not None and x != [] for x in (integers, choices, choices_file))
    if given != 1:
        raise ModescopeError("give exactly one candidate set: --integers LO HI, --choices (repeated) or --choices-file")
    if integers is not None:
        return cands.integers(integers[0], integers[1], limit)
    if choices:
        return cands.choices(choices, limit)
    return cands.choices_from_file(choices_file, limit)  # type: ignore[arg-type]


def _load_models(
    names: list[str],
    device: str,
    dtype: str,
    console: Console,
    tokenizer: list[str] | None = None,
    max_concurrency: int | None = None,
    max_logprobs: int | None = None,
    policy: LoadPolicy | None = None,
) -> list[Backend]:
    """Load the models of a command; the server options reach the NAME@URL models only, and are checked
    (with the names) before any model loads. `policy` holds --trust-remote-code and --allow-pickle."""
    from modescope.models import PRESETS, load, preset_cached
    from modescope.models.remote import is_remote
    from modescope.precision import is_reduced
    from modescope.precision import label as precision_label

    if len(set(names)) != len(names):
        raise ModescopeError(f"a model is listed twice ({', '.join(names)}); name each model once")
    server = ServerOptions.resolve(tokenizer, max_concurrency, max_logprobs, names)
    backends = []
    for name in names:
        first_time = name in PRESETS and PRESETS[name].installed() and not preset_cached(PRESETS[name])
        note = " (first use: converting the GGUF once, 5-20 s)" if first_time else ""
        doing = "connecting to" if is_remote(name) else "loading"
        with console.status(f"{doing} {name}{note}"):
            opt_ins = policy.for_load() if policy is not None else {}
            backends.append(load(name, device=device, dtype=dtype, **server.for_model(name), **opt_ins))
        if is_reduced(backends[-1].capabilities.precision):  # results say so too (metadata, pages, reports)
            console.print(
                f"{name}: {precision_label(str(backends[-1].capabilities.precision))}", style="yellow", markup=False
            )
    return backends


Models = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="Preset, folder, .gguf file, HF id, or NAME@URL (a model behind an OpenAI-compatible server, e.g. "
        "smollm2-135m-instruct@http://127.0.0.1:8000/v1); repeat to compare. Default: both presets.",
    ),
]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
PromptText = Annotated[str | None, typer.Option("--prompt", help="The prompt text.")]
PromptFile = Annotated[Path | None, typer.Option(help="Read the prompt from a UTF-8 file (kept verbatim).")]
Chat = Annotated[bool, typer.Option(help="Render the prompt as a user message through the chat template.")]
System = Annotated[str | None, typer.Option(help="System message (with --chat).")]
Prefill = Annotated[str, typer.Option(help="Start of the assistant's reply (with --chat).")]


class Strategy(StrEnum):
    direct = "direct"
    vary = "vary"
    few_shot = "few-shot"
    verbalized = "verbalized"


class GuideMix(StrEnum):
    geometric = "geometric"
    arithmetic = "arithmetic"


STRATEGY_HELP = (
    "Prompt strategy: direct; vary (an instruction to be original); few-shot (varied examples first); verbalized "
    "(ask for --k responses with their probabilities; parsed and counted)."
)
GUIDE_HELP = (
    "Base-guided decoding: sample from the mixture of each model with this guide model (its base; same tokenizer)."
)


class Equivalence(StrEnum):
    rouge1 = "rouge1"
    embedding = "embedding"


EquivalenceTest = Annotated[
    Equivalence, typer.Option(help="When two texts count as one answer (NoveltyBench classes): ROUGE-1 or embeddings.")
]
EquivalenceThreshold = Annotated[
    float | None, typer.Option(help="Similarity at or above which two texts are one class (default per test).")
]
Dtype = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.")]


@app.command()
def dist(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    system: System = None,
    prefill: Prefill = "",
    integers: Annotated[
        tuple[int, int] | None, typer.Option(metavar="LO HI", help="Every integer from LO to HI inclusive.")
    ] = None,
    choices: Annotated[list[str] | None, typer.Option("--choices", help="One candidate; repeat for more.")] = None,
    choices_file: Annotated[Path | None, typer.Option(help="Candidates, one per line.")] = None,
    leading_space: Annotated[
        LeadingSpace, typer.Option(help="Whitespace before the answer: both variants summed, required, or none.")
    ] = LeadingSpace.optional,
    tokenizations: Annotated[
        Tokenizations, typer.Option(help="Sum over every token sequence that spells a candidate, or the canonical one.")
    ] = Tokenizations.all,
    temperature: Annotated[
        float, typer.Option(help="Apply this temperature to every next-token distribution along every path.")
    ] = 1.0,
    max_candidates: Annotated[int, typer.Option(help="Refuse larger candidate sets.")] = 100_000,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the distributions.")] = None,
    top: Annotated[int, typer.Option(help="Outcomes to show per model.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Tree nodes per forward pass.")] = 128,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Exact probability of every candidate answer under each model, summed over all tokenizations."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.distribution import check_temperature

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if _prompt_set_given(*set_args):
            cands = _candidates(integers, choices, choices_file, max_candidates)
            keys: dict[str, Any] = {"leading_space": leading_space.value, "tokenizations": tokenizations.value}
            keys |= {"temperature": temperature, "prefill": prefill, "choices": cands}
            _refuse_in_prompt_set({"--plot": plot is not None, "--top": top != 10, "--batch-size": batch_size != 128})
            _over_prompt_set("distribution", keys, model, chat, system, json_path, None, device, dtype, locals())
            return

        the_prompt = _prompt(prompt, prompt_file, chat, system, prefill)
        cands = _candidates(integers, choices, choices_file, max_candidates)
        check_temperature(temperature)
        if batch_size < 1 or top < 1:
            raise ModescopeError("--batch-size and --top must be at least 1")
        _prepare_output(json_path, "--json")
        _prepare_output(plot, "--plot")
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "dist",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.distribution_parts(r, cands, batch_size, leading_space.value),
            tokenizer,
        )
        console = _console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = _load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        result = _run_distribution(backends, the_prompt, cands, leading_space, tokenizations, batch_size, temperature)
        _print_distribution(result, console, top)
        if json_path is not None:
            json_path.write_text(result.to_json())
            console.print(f"wrote {json_path}")
        if plot is not None:
            from modescope.viz.distribution_plot import plot_distribution

            plot_distribution(result, plot)
            console.print(f"wrote {plot}")


def _run_distribution(
    backends: list[Backend],
    prompt: str | ChatPrompt,
    cands: list[str],
    leading_space: LeadingSpace,
    tokenizations: Tokenizations,
    batch_size: int,
    temperature: float,
) -> DistributionResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modescope.probes.distribution import distribution

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        tasks: dict[str, Any] = {}

        def report(model: str, done: int, total: int) -> None:
            if model not in tasks:
                tasks[model] = bar.add_task(f"{model}: tree nodes", total=total)
            bar.update(tasks[model], completed=done, total=total)

        return distribution(
            backends,
            prompt,
            cands,
            leading_space=leading_space.value,
            tokenizations=tokenizations.value,
            batch_size=batch_size,
            progress=report,
            temperature=temperature,
        )


def _percent(p: float) -> str:
    """A probability as a percentage, with two significant digits below 0.1% (bounds are often tiny)."""
    v = 100 * p
    return f"{v:.1f}%" if v >= 10 else f"{v:.2f}%" if v >= 0.1 or v == 0 else f"{v:#.2g}%"


def _interval(low: float, high: float) -> str:
    return f"[{_percent(low)}, {_percent(high)}]"


UNDECIDED_RELATIVE = 1e-6  # an exact model's mass_upper above its mass by more than this (relative) is noted


def _print_distribution(result: DistributionResult, console: Console, top: int) -> None:
    """Tables of the top outcomes, per-model metrics and pair divergences. A bounded model (behind a top-k
    server) shows each outcome's absolute mass as [lower, upper] and is labelled; its metrics come from the
    lower bounds, marked with *."""
    from rich.table import Table
    from rich.text import Text

    bounded = {r.model for r in result.results if r.bounds is not None}
    title = "Top outcomes (probability within the set"
    title += "; bounded models: absolute mass [lower, upper], ranked by lower)" if bounded else ")"
    tops = Table(title=Text(title), title_justify="left")
    tops.add_column("rank", justify="right")
    for r in result.results:
        tops.add_column(Text(r.model + (f"\n{r.bounds}" if r.bounds is not None else "")))
    ranked = [sorted(r.outcomes, key=lambda o: -o.prob)[:top] for r in result.results]

    def cell(r: Any, o: Any) -> Text:  # Text: a candidate like "[red]" is shown, not read as markup
        shown = _interval(o.mass, o.mass_upper) if r.bounds is not None else f"{o.prob:.1%}"
        return Text(f"{o.text!r}  {shown}")

    for rank in range(min(top, len(result.candidates))):
        tops.add_row(str(rank + 1), *(cell(r, o[rank]) for r, o in zip(result.results, ranked, strict=True)))
    console.print(tops)

    def mark(r: Any, text: str) -> str:
        return f"{text} *" if r.model in bounded else text

    # Metrics as rows and models as columns, so that long model names fit an 80-column terminal.
    per_model: list[tuple[str, Callable[[Any], str]]] = [
        (
            "coverage (mass of the set)",
            lambda r: _interval(r.coverage, r.coverage_upper) if r.bounds is not None else f"{r.coverage:.2%}",
        ),
        ("entropy (bits)", lambda r: mark(r, f"{r.entropy_bits:.3f}")),
        ("normalized entropy", lambda r: mark(r, f"{r.normalized_entropy:.3f}")),
        ("effective outcomes (2^H)", lambda r: mark(r, f"{r.effective_outcomes:.1f}")),
        ("top-1", lambda r: mark(r, f"{r.top1!r} {r.top1_share:.1%}")),
        ("chi² vs uniform", lambda r: mark(r, f"{r.chi_square:.2f}")),
    ]
    console.print(
        _metric_table("Per model (within the set)", [r.model for r in result.results], per_model, result.results)
    )
    if result.comparisons:

        def pair(c: Any, text: str) -> str:
            return f"{text} *" if {c.a, c.b} & bounded else text

        per_pair: list[tuple[str, Callable[[Any], str]]] = [
            ("KL(a‖b) bits", lambda c: pair(c, f"{c.kl_ab_bits:.3f}")),
            ("KL(b‖a) bits", lambda c: pair(c, f"{c.kl_ba_bits:.3f}")),
            ("Jensen-Shannon bits", lambda c: pair(c, f"{c.js_bits:.3f}")),
            ("total variation", lambda c: pair(c, f"{c.tv:.3f}")),
            ("Spearman rank corr.", lambda c: pair(c, f"{c.spearman:+.3f}")),
        ]
        headers = [f"a={c.a}\nb={c.b}" for c in result.comparisons]
        console.print(_metric_table("Between models (within the set)", headers, per_pair, result.comparisons))
    for r in result.results:
        if r.bounds is not None:
            console.print(Text(f"* {r.model}: {r.bounds}; numbers within the set come from the lower bounds"))
        elif any(o.mass_upper - o.mass > UNDECIDED_RELATIVE * o.mass for o in r.outcomes):
            undecided = r.coverage_upper - r.coverage
            console.print(
                Text(f"note: {r.model}: undecided UTF-8 mass up to {undecided:.2g} (absolute), counted in mass_upper")
            )


def _metric_table(
    title: str, headers: list[str], rows: list[tuple[str, Callable[[Any], str]]], items: list[Any]
) -> Table:
    """A table with one row per metric and one column per item (a model, or a pair of models)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for header in headers:
        table.add_column(header, justify="right")
    for label, cell in rows:
        table.add_row(label, *(cell(item) for item in items))
    return table


def _sampler(
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    typical_p: float,
    top_n_sigma: float | None,
    xtc_threshold: float,
    xtc_probability: float,
    order: list[str] | None,
    console: Console,
) -> Any:
    from modescope.engine.samplers import DEFAULT_ORDER, SamplerSettings

    settings = SamplerSettings.make(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        top_n_sigma=top_n_sigma,
        xtc_threshold=xtc_threshold,
        xtc_probability=xtc_probability,
        order=tuple(order) if order else DEFAULT_ORDER,
    )
    for warning in settings.warnings():
        _console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    return settings


@app.command()
def sample(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    system: System = None,
    prefill: Prefill = "",
    n: Annotated[int, typer.Option("-n", "--n", help="Completions per model.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Tokens per completion at most.")] = 64,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop string; repeat for more.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same samples.")] = 0,
    temperature: Annotated[float, typer.Option(help="0 = greedy.", rich_help_panel="Sampler chain")] = 1.0,
    top_k: Annotated[
        int, typer.Option(help="Keep the k most likely tokens (0 = off).", rich_help_panel="Sampler chain")
    ] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus mass (1 = off).", rich_help_panel="Sampler chain")] = 1.0,
    min_p: Annotated[
        float, typer.Option(help="Keep p >= min_p * p_max (0 = off).", rich_help_panel="Sampler chain")
    ] = 0.0,
    typical_p: Annotated[
        float, typer.Option(help="Locally typical mass (1 = off).", rich_help_panel="Sampler chain")
    ] = 1.0,
    top_n_sigma: Annotated[
        float | None, typer.Option(help="Keep logits within n std of the max.", rich_help_panel="Sampler chain")
    ] = None,
    xtc_threshold: Annotated[
        float, typer.Option(help="XTC: tokens at or above it are 'top choices'.", rich_help_panel="Sampler chain")
    ] = 0.1,
    xtc_probability: Annotated[
        float,
        typer.Option(help="XTC: chance per token to exclude top choices (0 = off).", rich_help_panel="Sampler chain"),
    ] = 0.0,
    sampler_order: Annotated[
        list[str] | None,
        typer.Option("--sampler-order", help="Sampler names in order; repeat.", rich_help_panel="Sampler chain"),
    ] = None,
    strategy: Annotated[Strategy, typer.Option(help=STRATEGY_HELP, rich_help_panel="Remedies")] = Strategy.direct,
    k: Annotated[
        int, typer.Option("--k", help="Responses per generation (verbalized strategy).", rich_help_panel="Remedies")
    ] = 5,
    guide: Annotated[str | None, typer.Option(help=GUIDE_HELP, rich_help_panel="Remedies")] = None,
    guide_alpha: Annotated[
        float, typer.Option(help="The guide's weight α in [0, 1] (0: the model alone).", rich_help_panel="Remedies")
    ] = 0.5,
    guide_mix: Annotated[
        GuideMix,
        typer.Option(help="geometric: p^(1-α)·p_guide^α renormalized; arithmetic.", rich_help_panel="Remedies"),
    ] = GuideMix.geometric,
    top_alternatives: Annotated[int, typer.Option(help="Alternatives recorded per token.")] = 10,
    equivalence: EquivalenceTest = Equivalence.rouge1,
    equivalence_threshold: EquivalenceThreshold = None,
    max_n: Annotated[int, typer.Option(help="Refuse larger -n.")] = 1024,
    show: Annotated[int, typer.Option(help="Completions printed per model.")] = 4,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every completion, token and metric as JSON.")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML page of the completions.")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """n completions per model with per-token probabilities, and how diverse they are."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.sampling import sample_models

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if _prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "n": n,
                "max_tokens": max_tokens,
                "stop": stop or [],
                "seed": seed,
                "prefill": prefill,
            }
            keys |= {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
            keys |= {"typical_p": typical_p, "top_n_sigma": top_n_sigma, "xtc_threshold": xtc_threshold}
            keys |= {"xtc_probability": xtc_probability, "sampler_order": sampler_order}
            keys |= {"strategy": strategy.value, "k": k, "guide": guide, "guide_alpha": guide_alpha}
            keys |= {"guide_mix": guide_mix.value}
            _refuse_in_prompt_set(
                {
                    "--equivalence": equivalence != Equivalence.rouge1,
                    "--equivalence-threshold": equivalence_threshold is not None,
                    "--top-alternatives": top_alternatives != 10,
                }
            )
            _over_prompt_set("sample", keys, model, chat, system, json_path, html, device, dtype, locals())
            return

        the_prompt = _prompt(prompt, prompt_file, chat, system, prefill)
        if n < 1 or n > max_n:
            raise ModescopeError(f"-n must be between 1 and {max_n} (got {n}); raise --max-n for more samples")
        if max_tokens < 1 or top_alternatives < 0 or show < 0:
            raise ModescopeError("--max-tokens must be at least 1; --top-alternatives and --show at least 0")
        console = _console()
        settings = _sampler(
            temperature,
            top_k,
            top_p,
            min_p,
            typical_p,
            top_n_sigma,
            xtc_threshold,
            xtc_probability,
            sampler_order,
            console,
        )
        _prepare_output(json_path, "--json")
        _prepare_output(html, "--html")
        remedies = _remedies(strategy.value, k, None, guide_alpha, guide_mix.value)  # checked before loading
        from modescope import resources

        filtered = bool(set(settings.active) - {"temperature"})  # truncation samplers copy more
        guide_shape = resources.model_shape(guide) if guide else None
        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "sample",
            model or list(DEFAULT_MODELS),
            remedies.prompt(the_prompt),
            device,
            dtype,
            lambda r: resources.sample_parts(r, n, max_tokens, top_alternatives, filtered, guide_shape),
            tokenizer,
        )
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = _load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        if guide is not None:
            (guide_model,) = _load_models([guide], device, dtype, console, policy=policy)
            remedies = _remedies(strategy.value, k, guide_model, guide_alpha, guide_mix.value)
            backends = [remedies.backend(b) for b in backends]
        with console.status("sampling") as status:
            result = sample_models(
                backends,
                remedies.prompt(the_prompt),
                n=n,
                max_tokens=max_tokens,
                sampler=settings,
                seed=seed,
                stop=remedies.stop(stop or ()),
                top_k_alternatives=top_alternatives,
                max_samples=max_n,
                progress=lambda name: status.update(f"sampling {n} completions from {name}"),
                equivalence=equivalence.value,
                equivalence_threshold=equivalence_threshold,
            )
        _print_samples(result, console, show)
        data = result.to_dict() | ({"remedies": remedies.describe()} if remedies.active else {})
        if remedies.strategy == "verbalized":
            data["verbalized"] = _print_verbalized(result, remedies.k, console)
        if json_path is not None:
            json_path.write_text(_strict_json(data))
            console.print(f"wrote {json_path}")
        if html is not None:
            from modescope.viz.tokens_html import write_sampling_page

            write_sampling_page(result, html)
            console.print(f"wrote {html}")


def _remedies(strategy: str, k: int, guide: Backend | None, alpha: float, mix: str) -> Any:
    from modescope.remedies.guided import check_alpha
    from modescope.remedies.options import Remedies

    check_alpha(alpha)
    return Remedies(strategy, k, guide, alpha, mix)


def _print_verbalized(result: Any, k: int, console: Console) -> dict[str, Any]:
    """Each model's parsed Verbalized Sampling responses with their stated probabilities, and what could not be
    parsed; returns them by model (for --json)."""
    from rich.table import Table

    from modescope.remedies.options import verbalized_summary

    found = {}
    for m in result.models:
        summary = found[m.model] = verbalized_summary(m.texts, k, [c.finish_reason == "length" for c in m.completions])
        table = Table(
            title=f"{m.model}: parsed {summary['parse_rate']:.0%} of the {k * len(m.completions)} responses asked for "
            f"({summary['unparsed']} pieces unparsed)",
            title_justify="left",
        )
        for column in ("completion", "stated", "response"):
            table.add_column(column)
        for index, responses in enumerate(summary["responses"]):
            for r in responses:
                table.add_row(str(index + 1), f"{r['stated']:.2f}", r["text"])
        console.print(table)
    return found


def _named_metric(name: str, metrics_of: Callable[[Any], dict[str, float]]) -> Callable[[Any], str]:
    """A table cell: the metric `name` of an item, to four significant digits."""
    return lambda item: f"{metrics_of(item)[name]:.4g}"


def _strict_json(data: Any) -> str:
    from modescope.jsonsafe import finite_json

    return finite_json(data)


def _print_samples(result: Any, console: Console, show: int) -> None:
    import math

    from rich.text import Text

    for model in result.models:
        console.rule(f"{model.model}: {result.n} completions in {model.seconds:.1f} s")
        for k, completion in enumerate(model.completions[:show]):
            line = Text(f"{k + 1:>3}  ")
            for token in completion.tokens:
                p = math.exp(token.raw_logprob)
                colour = "green" if p >= 0.9 else "yellow" if p >= 0.5 else "dark_orange" if p >= 0.1 else "red"
                line.append(token.text if not token.special else f"⟨{token.text}⟩", style=colour)
            console.print(line)
    per_model = [(name, _named_metric(name, lambda m: m.metrics)) for name in result.models[0].metrics]
    console.print(
        _metric_table(
            "Diversity (colours: raw probability ≥0.9 green, ≥0.5 yellow, ≥0.1 orange, else red)",
            [m.model for m in result.models],
            per_model,
            result.models,
        )
    )


@app.command()
def diversity(
    texts: Annotated[Path, typer.Option(help='JSONL file, one {"group": str, "text": str} per line.')],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics per group as JSON.")] = None,
    equivalence: EquivalenceTest = Equivalence.rouge1,
    equivalence_threshold: EquivalenceThreshold = None,
) -> None:
    """Diversity metrics of externally generated texts, per group (typically one group per prompt)."""
    with user_errors():
        from modescope.metrics.diversity import diversity_of_jsonl

        _prepare_output(json_path, "--json")
        console = _console()
        with console.status("computing diversity metrics"):
            groups = diversity_of_jsonl(texts, equivalence=equivalence.value, threshold=equivalence_threshold)
        names = list(next(iter(groups.values())))
        rows = [(name, _named_metric(name, lambda g: g)) for name in names]
        console.print(_metric_table("Diversity per group", list(groups), rows, list(groups.values())))
        if json_path is not None:
            json_path.write_text(_strict_json(groups))
            console.print(f"wrote {json_path}")


@app.command(name="temperature")
def temperature_command(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    temperature: Annotated[
        list[float] | None, typer.Option("--temperature", help="Temperature of the sweep; repeat.")
    ] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Completions per model and temperature.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Tokens per completion at most.")] = 48,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    integers: Annotated[
        tuple[int, int] | None, typer.Option(metavar="LO HI", help="Outcome-level test on these integers.")
    ] = None,
    choices: Annotated[list[str] | None, typer.Option("--choices", help="Outcome-level test on these answers.")] = None,
    tokenizations: Annotated[
        Tokenizations, typer.Option(help="Spellings counted by the outcome-level test.")
    ] = Tokenizations.all,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the sweep and the fits as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG: metrics vs temperature, and divergence vs tau.")
    ] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Diversity vs temperature per model, and "is it just temperature?": can one temperature turn the first
    model (the base) into the second (the tuned one)?"""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes import temperature as probe

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if _prompt_set_given(*set_args):
            keys: dict[str, Any] = {"temperatures": temperature, "n": n, "max_tokens": max_tokens, "seed": seed}
            keys |= {"integers": integers, "choices": choices, "tokenizations": tokenizations.value}
            _refuse_in_prompt_set({"--plot": plot is not None})
            _over_prompt_set("temperature", keys, model, chat, None, json_path, None, device, dtype, locals())
            return

        the_prompt = _prompt(prompt, prompt_file, chat)
        temperatures = temperature or list(probe.DEFAULT_TEMPERATURES)
        if any(not (t >= 0) for t in temperatures):
            raise ModescopeError("temperatures must be 0 (greedy) or positive")
        if n < 1 or max_tokens < 1:
            raise ModescopeError("-n and --max-tokens must be at least 1")
        cands = _candidates(integers, choices, None, 100_000) if (integers or choices) else None
        _prepare_output(json_path, "--json")
        _prepare_output(plot, "--plot")
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "temperature",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.temperature_parts(r, n, max_tokens),
            tokenizer,
        )
        console = _console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = _load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        with console.status("sweeping temperatures") as status:
            sweep = probe.temperature_sweep(backends, the_prompt, temperatures, n, max_tokens, seed, status.update)
            fits = []
            if len(backends) >= 2:
                base, tuned = backends[0], backends[1]
                if probe.same_tokenizer(base, tuned):
                    status.update("token-level temperature fit")
                    fits += probe.token_level_fits(base, tuned, the_prompt, seed=seed)
                else:
                    console.print(
                        f"token-level test skipped: '{base.name}' and '{tuned.name}' have different tokenizers"
                    )
                if cands is not None:
                    status.update("outcome-level temperature fit")
                    fits += probe.outcome_level_fits(base, tuned, the_prompt, cands, tokenizations=tokenizations.value)
                elif not fits:
                    console.print("outcome-level test skipped: give a candidate set (--integers LO HI or --choices)")
        _print_sweep(sweep, fits, console)
        if json_path is not None:
            json_path.write_text(_strict_json(probe.report_dict(sweep, fits)))
            console.print(f"wrote {json_path}")
        if plot is not None:
            from modescope.viz.temperature_plot import plot_temperature

            plot_temperature(sweep, fits, plot)
            console.print(f"wrote {plot}")


def _print_sweep(sweep: Any, fits: list[Any], console: Console) -> None:
    from rich.table import Table

    names = ["mean_entropy_bits", "distinct_2", "self_bleu", "embedding_diversity", "equivalence_classes"]
    table = Table(title="Diversity vs temperature", title_justify="left")
    for column in ["model", "T", *names]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for point in sweep.points:
        table.add_row(
            point.model, f"{point.temperature:g}", *(f"{point.metrics.get(k, float('nan')):.3g}" for k in names)
        )
    console.print(table)
    if fits:
        fit_table = Table(title="Is it just temperature? (divergence in bits)", title_justify="left")
        for column in ["form", "tempered model", "to match", "tau*", "D(tau*)", "D(1)", "explained"]:
            fit_table.add_column(
                column, justify="left" if column in ("form", "tempered model", "to match") else "right"
            )
        for f in fits:
            fit_table.add_row(
                f.form,
                f.source,
                f.target,
                f"{f.tau:.3f}",
                f"{f.divergence_at_tau:.4f}",
                f"{f.divergence_at_one:.4f}",
                f"{f.explained:.1%}",
            )
        console.print(fit_table)


class Ending(StrEnum):
    sentence = "sentence"
    edit = "edit"
    embedding = "embedding"


@app.command()
def attractor(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    edit: Annotated[
        list[str] | None, typer.Option("--edit", help="I:J:TEXT replaces characters I..J of the completion; repeat.")
    ] = None,
    swap_positions: Annotated[int, typer.Option(help="Evenly spaced positions for token swaps (0 = none).")] = 5,
    position: Annotated[list[int] | None, typer.Option("--position", help="Swap at this token index; repeat.")] = None,
    alternatives: Annotated[int, typer.Option(help="Swap in the k-th likeliest token for k = 2..K.")] = 3,
    detour: Annotated[
        list[int] | None, typer.Option("--detour", help="Sampled detour at this token index; repeat.")
    ] = None,
    detour_tokens: Annotated[int, typer.Option(help="Tokens sampled per detour.")] = 3,
    max_tokens: Annotated[int, typer.Option(help="Length of the mainline, in tokens.")] = 48,
    ending: Annotated[Ending, typer.Option(help="When an ending counts as converged.")] = Ending.sentence,
    threshold: Annotated[float, typer.Option(help="Similarity threshold for --ending edit or embedding.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the sampled detours.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every run and the aggregates as JSON.")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Write the aligned runs as a self-contained HTML page.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of basin share and distances per model.")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Perturb the greedy completion, regenerate every perturbation in one batch, and measure how often and how
    fast it comes back to the same text (the basin share)."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.attractors import AttractorPlan, Edit, attractor_experiment

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if _prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "edits": edit or [],
                "swap_positions": swap_positions,
                "alternatives": alternatives,
            }
            keys |= {"detours": detour or [], "max_tokens": max_tokens, "criterion": ending.value}
            keys |= {"threshold": threshold, "seed": seed}
            _refuse_in_prompt_set(
                {"--position": bool(position), "--detour-tokens": detour_tokens != 3, "--plot": bool(plot)}
            )
            _over_prompt_set("attractor", keys, model, chat, None, json_path, html, device, dtype, locals())
            return

        the_prompt = _prompt(prompt, prompt_file, chat)
        plan = AttractorPlan(
            edits=[Edit.parse(e) for e in edit or []],
            swap_positions=swap_positions,
            positions=position,
            alternatives=alternatives,
            detour_positions=detour or [],
            detour_tokens=detour_tokens,
            seed=seed,
        )
        for path, what in ((json_path, "--json"), (html, "--html"), (plot, "--plot")):
            _prepare_output(path, what)
        from modescope import resources

        inserted = max([detour_tokens, *(len(e.text.encode("utf-8")) for e in plan.edits)])
        edits, detours, positions = len(plan.edits), len(plan.detour_positions), len(position) if position else None
        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "attractor",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.attractor_parts(
                r, max_tokens, swap_positions, alternatives, positions, edits, detours, inserted
            ),
            tokenizer,
        )
        console = _console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = _load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        with console.status("mainlines and perturbations"):
            results = attractor_experiment(backends, the_prompt, plan, max_tokens, ending.value, threshold)
        _print_attractors(results, console)
        if json_path is not None:
            json_path.write_text(
                _strict_json({"prompt": _prompt_text(the_prompt), "models": [r.to_dict() for r in results]})
            )
            console.print(f"wrote {json_path}")
        if html is not None:
            from modescope.viz.attractor_html import write_attractor_page

            write_attractor_page(results, _prompt_text(the_prompt), html)
            console.print(f"wrote {html}")
        if plot is not None:
            from modescope.viz.attractor_plot import plot_attractors

            plot_attractors(results, plot)
            console.print(f"wrote {plot}")


def _prompt_text(prompt: str | ChatPrompt) -> str:
    return prompt if isinstance(prompt, str) else prompt.user


def _print_attractors(results: list[Any], console: Console) -> None:
    from rich.table import Table

    for result in results:
        console.rule(f"{result.model}: mainline")
        console.print(result.mainline.text, markup=False)
        runs = Table(title_justify="left")
        for column in ["perturbation", "rejoins after", "confidence on detour", "ending"]:
            runs.add_column(column, justify="left" if column == "perturbation" else "right")
        for r in result.runs:
            distance = "never" if r.reconvergence_tokens is None else f"{r.reconvergence_tokens} tokens"
            runs.add_row(
                r.perturbation.label, distance, f"{r.divergent_confidence:.2f}", "same" if r.converged else "differs"
            )
        console.print(runs)
    per_model: list[tuple[str, Callable[[Any], str]]] = [
        ("perturbations", lambda r: str(len(r.runs))),
        ("basin share (rejoined)", lambda r: f"{r.basin_share:.0%}"),
        ("ending converged", lambda r: f"{r.ending_share:.0%}"),
        ("median tokens to rejoin", lambda r: f"{r.median_distance:g}"),
    ]
    console.print(_metric_table("Attractors", [r.model for r in results], per_model, results))


@app.command()
def forks(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    samples: Annotated[int, typer.Option(help="Continuations sampled per alternative token.")] = 8,
    threshold: Annotated[float, typer.Option(help="Alternatives at or above this probability are followed.")] = 0.05,
    max_alternatives: Annotated[int, typer.Option(help="Alternatives per position, the mainline token included.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Length of the mainline, in tokens.")] = 32,
    outcome_regex: Annotated[
        str | None, typer.Option(help="Outcome = this regex's group 1 (or match); default: the last sentence.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    top: Annotated[int, typer.Option(help="Forking positions to list.")] = 5,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every position's outcomes as JSON.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the mainline shaded by outcome shift as HTML.")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Forking tokens: where along the greedy completion the final outcome gets decided."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.forks import forking_tokens

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if _prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "samples": samples,
                "threshold": threshold,
                "max_alternatives": max_alternatives,
            }
            keys |= {"max_tokens": max_tokens, "outcome_regex": outcome_regex, "seed": seed}
            _refuse_in_prompt_set({"--top": top != 5})
            _over_prompt_set("forks", keys, model, chat, None, json_path, html, device, dtype, locals())
            return

        the_prompt = _prompt(prompt, prompt_file, chat)
        _prepare_output(json_path, "--json")
        _prepare_output(html, "--html")
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "forks",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.forks_parts(r, max_tokens, samples, threshold, max_alternatives),
            tokenizer,
        )
        console = _console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = _load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        reports, results = {}, {}
        for backend in backends:
            with console.status(f"{backend.name}: sampling from every alternative along the mainline"):
                result = forking_tokens(
                    backend,
                    backend.prompt_ids(the_prompt),
                    max_tokens=max_tokens,
                    samples=samples,
                    threshold=threshold,
                    max_alternatives=max_alternatives,
                    seed=seed,
                    outcome_regex=outcome_regex,
                )
            reports[backend.name], results[backend.name] = result.to_dict(), result
            _print_forks(backend.name, result, console, top)
        if json_path is not None:
            json_path.write_text(_strict_json({"prompt": _prompt_text(the_prompt), "models": reports}))
            console.print(f"wrote {json_path}")
        if html is not None:
            from modescope.viz.forks_html import write_forks_page

            write_forks_page(results, _prompt_text(the_prompt), html)
            console.print(f"wrote {html}")


def _print_forks(name: str, result: Any, console: Console, top: int) -> None:
    from rich.table import Table

    table = Table(title=f"{name}: forking tokens (largest shift of the outcome distribution)", title_justify="left")
    for column in ["position", "token", "shift (TV)", "most likely outcome after it"]:
        table.add_column(column, justify="right" if column in ("position", "shift (TV)") else "left")
    for fork in result.forks(top):
        best = max(fork.outcomes.items(), key=lambda kv: kv[1]) if fork.outcomes else ("", 0.0)
        table.add_row(str(fork.position), repr(fork.token), f"{fork.change_score:.2f}", f"{best[1]:.0%} {best[0]!r}")
    console.print(table)


@app.command()
def multiverse(
    model: Models = None,
    prompt: PromptText = None,
    prompt_file: PromptFile = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    chat: Chat = False,
    system: System = None,
    prefill: Prefill = "",
    prefix: Annotated[str, typer.Option(help="Start from this branch: text that follows the prompt.")] = "",
    depth: Annotated[int, typer.Option(help="Deepest step (tokens below the prompt and prefix).")] = 4,
    cutoff: Annotated[float, typer.Option(help="Joint probability a node needs to be listed and expanded.")] = 0.01,
    max_nodes: Annotated[int, typer.Option(help="Most nodes in the tree; expansion stops there, and says so.")] = 2000,
    merge: Annotated[
        bool, typer.Option(help="Merge sibling tokens whose text is equal after whitespace normalization.")
    ] = True,
    stop_at_eos: Annotated[bool, typer.Option(help="End a branch at the end-of-text token.")] = True,
    zoom: Annotated[
        list[str] | None,
        typer.Option(help="Renormalize the figures to the node reached by these step texts (repeat per step)."),
    ] = None,
    svg: Annotated[Path | None, typer.Option(help="Write the block figure as SVG.")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the block figure as PNG.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the interactive page (click a block to zoom).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the trees as nested JSON.")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse expansions cached on disk (same models, prompt, options).")] = True,
    device: Device = "auto",
    dtype: Dtype = "auto",
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Block multiverse: the tree of likely continuations as nested blocks, for each model and their difference."""
    with user_errors():
        from modescope.models import DEFAULT_MODELS
        from modescope.probes.multiverse import ExpansionOptions

        set_args = (prompts_file, prompt, prompt_file, template, store_path, resume)
        if _prompt_set_given(*set_args):
            keys: dict[str, Any] = {
                "prefix": prefix,
                "depth": depth,
                "cutoff": cutoff,
                "max_nodes": max_nodes,
                "merge": merge,
            }
            keys["prefill"] = prefill
            unsupported = {"--no-stop-at-eos": not stop_at_eos, "--zoom": bool(zoom), "--svg": bool(svg)}
            _refuse_in_prompt_set(unsupported | {"--png": bool(png), "--no-cache": not cache})
            _over_prompt_set("multiverse", keys, model, chat, system, json_path, html, device, dtype, locals())
            return

        options = ExpansionOptions(depth, cutoff, max_nodes, merge, stop_at_eos)
        options.check()  # before any model is loaded
        the_prompt = _prompt(prompt, prompt_file, chat, system, prefill)
        outputs = {"--svg": svg, "--png": png, "--html": html, "--json": json_path}
        for option, path in outputs.items():
            _prepare_output(path, option)
        from modescope import resources

        resources.check_command(  # before any model loads: refuse what cannot fit in memory
            "multiverse",
            model or list(DEFAULT_MODELS),
            the_prompt,
            device,
            dtype,
            lambda r: resources.multiverse_parts(r, depth, cutoff, max_nodes),
            tokenizer,
            extra_text=prefix,
        )
        console = _console()
        policy = load_policy(trust_remote_code, allow_pickle)
        backends = _load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        tree = _run_multiverse(backends, the_prompt, prefix, options, cache)
        view = tree.view(tree.find(zoom)) if zoom else None
        _print_multiverse(tree, console)
        if view is not None:
            console.print(
                f"figures zoomed to {view.node.path_text()!r}: p = {view.joint:.3g}, {view.bits_gained:.2f} bits"
            )
        _write_multiverse(tree, view, svg, png, html, json_path, console)


def _run_multiverse(
    backends: list[Backend],
    prompt: str | ChatPrompt,
    prefix: str,
    options: Any,
    cache: bool,
) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from modescope.models.hf import cache_root
    from modescope.probes.multiverse import multiverse as expand

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("expanding: 0 nodes", total=None)
        done = [0]

        def report(count: int) -> None:
            done[0] += count
            bar.update(task, description=f"expanding: {done[0]} nodes (best first, all models in each batch)")

        return expand(
            backends,
            prompt,
            prefix=prefix,
            depth=options.depth,
            cutoff=options.cutoff,
            max_nodes=options.max_nodes,
            merge=options.merge,
            stop_at_eos=options.stop_at_eos,
            cache_dir=cache_root() / "multiverse" if cache else None,
            progress=report,
        )


def _print_multiverse(tree: Any, console: Console) -> None:
    from rich.table import Table

    source = " (from the cache)" if tree.cached else f" in {tree.seconds:.1f} s"
    console.print(f"{tree.size} nodes, depth {tree.depth}, cutoff {tree.cutoff:g}{source}")
    for m, name in enumerate(tree.models):
        table = Table(title=f"{name}: most likely paths", title_justify="left")
        for column in ["joint p", "path", "entropy at the end (bits)"]:
            table.add_column(column, justify="left" if column == "path" else "right")
        leaves = [n for n in tree.nodes() if not n.listed_children(m, tree.cutoff) and (n.joint(m) or 0) >= tree.cutoff]
        for node in sorted(leaves, key=lambda n: -(n.joint(m) or 0))[:8]:
            entropy = node.values[m].entropy_bits if node.values[m] is not None else None
            table.add_row(f"{node.joint(m):.3f}", repr(node.path_text(m)), "-" if entropy is None else f"{entropy:.2f}")
        console.print(table)
    for notice in tree.notices:
        console.print(f"[yellow]note:[/] {notice}", markup=True)


def _write_multiverse(
    tree: Any,
    view: Any,
    svg: Path | None,
    png: Path | None,
    html: Path | None,
    json_path: Path | None,
    console: Console,
) -> None:
    figures = [p for p in (svg, png) if p is not None]
    if figures:
        from modescope.viz.multiverse_plot import plot_multiverse

        plot_multiverse(tree, figures, view=view)
    if html is not None:
        from modescope.viz.multiverse_html import write_multiverse_html

        write_multiverse_html(tree.to_dict(), html)
    if json_path is not None:
        json_path.write_text(_strict_json(tree.to_dict()))
    for path in [*figures, html, json_path]:
        if path is not None:
            console.print(f"wrote {path}")


@app.command()
def models(
    spec: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME@URL",
            help="A model behind an OpenAI-compatible server: connect and show what it offers at its tier.",
        ),
    ] = None,
    tokenizer: Tokenizer = None,
    max_concurrency: MaxConcurrency = None,
    max_logprobs: MaxLogprobs = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """List the preset models, whether each is installed, and whether its converted copy is cached; or, given
    NAME@URL, connect to that server and show its capability tier and which probes work at it."""
    with user_errors():
        if spec is None:
            if tokenizer or max_concurrency is not None or max_logprobs is not None or trust_remote_code:
                raise ModescopeError(
                    "--tokenizer, --max-concurrency, --max-logprobs and --trust-remote-code need a NAME@URL argument"
                )
            _print_presets()
            return
        from modescope.models.remote import is_remote

        if not is_remote(spec):
            raise ModescopeError(
                f"'{spec}' is not NAME@URL; give a model behind a server (the served name, @, then the base URL, "
                "e.g. smollm2-135m-instruct@http://127.0.0.1:8000/v1), or no argument to list the presets"
            )
        console = _console()
        policy = load_policy(trust_remote_code, allow_pickle=False)  # only the tokenizer loads here
        [backend] = _load_models([spec], "auto", "auto", console, tokenizer, max_concurrency, max_logprobs, policy)
        try:
            console.print(_server_table(backend))
        finally:
            backend.close()


def probe_support(capabilities: Any) -> list[tuple[str, str]]:
    """Which probes work at a backend's capability tier, and how (exact numbers, bounds, or not at all)."""
    tier, chat_only, top = capabilities.tier, capabilities.chat_only, capabilities.top_k
    scores = tier != "sample-only" and not chat_only  # probes that ask about given token paths need /completions
    return [
        ("dist", "exact" if tier == "full" else f"bounds (top-{top} shown)" if scores else "no"),
        (
            "sample",
            "yes; no probabilities (text metrics only)"
            if tier == "sample-only"
            else "yes; entropy as bounds from the top alternatives"
            if capabilities.server is not None
            else "yes",
        ),
        ("temperature", "yes" if tier == "full" else "the sweep only (the τ* fits need whole distributions)"),
        ("attractor", "yes" if scores else "no (needs token log-probabilities and /v1/completions)"),
        ("forks", "yes" if scores else "no (needs token log-probabilities and /v1/completions)"),
        (
            "multiverse",
            "exact"
            if tier == "full"
            else f"nodes below the top {top} count as unexpanded"
            if scores
            else "no (needs token log-probabilities and /v1/completions)",
        ),
    ]


def _server_table(backend: Backend) -> Table:
    from rich.table import Table

    from modescope.models.remote import split_remote

    capabilities = backend.capabilities
    served, base_url = split_remote(capabilities.server or backend.name)
    table = Table(title=f"{capabilities.server}: tier {capabilities.tier}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    context = "unknown" if backend.max_context >= 1 << 30 else f"{backend.max_context:,} tokens"
    rows = [
        ("server", base_url),
        ("served name", served),
        ("tier", capabilities.tier),
        ("alternatives shown per position", capabilities.shows),
        ("scores given sequences", "yes" if capabilities.scores_sequences else "no"),
        ("chat-only", "yes" if capabilities.chat_only else "no"),
        ("vocabulary", f"{backend.vocab.size:,} tokens"),
        ("context length", context),
    ]
    rows += [(f"probe: {name}", support) for name, support in probe_support(capabilities)]
    for row in rows:
        table.add_row(*row)
    return table


def _print_presets() -> None:
    from rich.table import Table

    from modescope.models import PRESETS, preset_cached

    table = Table(
        title="Presets (any other model: a Hugging Face id, a folder, a .gguf file or NAME@URL)", title_justify="left"
    )
    for column in ["name", "kind", "installed", "cached", "description (package)"]:
        # preset names are what users type: never cut them, let the description wrap instead
        width = max(len(name) for name in PRESETS) if column == "name" else len(column)
        table.add_column(column, no_wrap=column != "description (package)", min_width=width)
    for p in PRESETS.values():
        installed = p.installed()
        cached = "yes" if preset_cached(p) else "no"
        table.add_row(p.name, p.kind, "yes" if installed else "no", cached, f"{p.description} ({p.package})")
    _console().print(table)


def _register_subcommands() -> None:
    """Command groups that live next to their code (their modules import only typer at the top)."""
    from modescope.lab.cli import lab_app
    from modescope.remedies.frontier_cli import frontier_command
    from modescope.remedies.verbalized_cli import verbalized_command
    from modescope.suites import commands
    from modescope.web.cli import serve

    app.command()(serve)
    app.add_typer(lab_app, name="lab")
    app.command("run")(commands.run_command)
    app.command("suites")(commands.suites_command)
    app.command("runs")(commands.runs_command)
    app.command("export")(commands.export_command)
    app.command("report")(commands.report_command)
    app.command("frontier")(frontier_command)
    app.command("verbalized")(verbalized_command)


_register_subcommands()


def main() -> None:
    """Entry point of the `modescope` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
