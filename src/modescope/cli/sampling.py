"""`modescope sample` (n completions per model with per-token probabilities, the sampler chain and the
remedies) and `modescope diversity` (the diversity metrics of texts generated elsewhere)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import (
    Chat,
    Device,
    Dtype,
    Models,
    Prefill,
    PromptFile,
    PromptsFile,
    PromptText,
    Resume,
    SetStore,
    System,
    Template,
    load_models,
    make_console,
    metric_table,
    named_metric,
    prepare_output,
    prompt_from_options,
    strict_json,
    user_errors,
)
from modescope.cli.prompt_sets import over_prompt_set, prompt_set_given, refuse_in_prompt_set
from modescope.errors import ModescopeError
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy
from modescope.server_options import MaxConcurrency, MaxLogprobs, Tokenizer

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.models.base import Backend


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
        make_console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    return settings


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
        if prompt_set_given(*set_args):
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
            refuse_in_prompt_set(
                {
                    "--equivalence": equivalence != Equivalence.rouge1,
                    "--equivalence-threshold": equivalence_threshold is not None,
                    "--top-alternatives": top_alternatives != 10,
                }
            )
            over_prompt_set("sample", keys, model, chat, system, json_path, html, device, dtype, locals())
            return

        the_prompt = prompt_from_options(prompt, prompt_file, chat, system, prefill)
        if n < 1 or n > max_n:
            raise ModescopeError(f"-n must be between 1 and {max_n} (got {n}); raise --max-n for more samples")
        if max_tokens < 1 or top_alternatives < 0 or show < 0:
            raise ModescopeError("--max-tokens must be at least 1; --top-alternatives and --show at least 0")
        console = make_console()
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
        prepare_output(json_path, "--json")
        prepare_output(html, "--html")
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
        backends = load_models(
            model or list(DEFAULT_MODELS), device, dtype, console, tokenizer, max_concurrency, max_logprobs, policy
        )
        if guide is not None:
            (guide_model,) = load_models([guide], device, dtype, console, policy=policy)
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
            json_path.write_text(strict_json(data))
            console.print(f"wrote {json_path}")
        if html is not None:
            result.save_html(html)
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
    per_model = [(name, named_metric(name, lambda m: m.metrics)) for name in result.models[0].metrics]
    console.print(
        metric_table(
            "Diversity (colours: raw probability ≥0.9 green, ≥0.5 yellow, ≥0.1 orange, else red)",
            [m.model for m in result.models],
            per_model,
            result.models,
        )
    )


def diversity(
    texts: Annotated[Path, typer.Option(help='JSONL file, one {"group": str, "text": str} per line.')],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics per group as JSON.")] = None,
    equivalence: EquivalenceTest = Equivalence.rouge1,
    equivalence_threshold: EquivalenceThreshold = None,
) -> None:
    """Diversity metrics of externally generated texts, per group (typically one group per prompt)."""
    with user_errors():
        from modescope.metrics.diversity import diversity_of_jsonl

        prepare_output(json_path, "--json")
        console = make_console()
        with console.status("computing diversity metrics"):
            groups = diversity_of_jsonl(texts, equivalence=equivalence.value, threshold=equivalence_threshold)
        names = list(next(iter(groups.values())))
        rows = [(name, named_metric(name, lambda g: g)) for name in names]
        console.print(metric_table("Diversity per group", list(groups), rows, list(groups.values())))
        if json_path is not None:
            json_path.write_text(strict_json(groups))
            console.print(f"wrote {json_path}")
