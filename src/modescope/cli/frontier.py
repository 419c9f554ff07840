"""`modescope frontier`: remedies for collapse on a diversity-quality frontier, from the command line.

The options become a one-probe suite of kind `frontier` that runs through the suite runner, so the run is
stored per prompt and model (a killed run continues with `--resume`, a rerun comes from the cache), and ends
with the frontier's table, plot and interactive page.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modescope.cli.common import (
    PromptsFile,
    Resume,
    SetStore,
    Template,
    check_chat_options,
    make_console,
    prepare_output,
    user_errors,
)
from modescope.cli.prompt_sets import run_prompt_set
from modescope.load_options import AllowPickle, TrustRemoteCode, load_policy

if TYPE_CHECKING:
    from rich.console import Console

    from modescope.models.safety import LoadPolicy


class Mix(StrEnum):
    geometric = "geometric"
    arithmetic = "arithmetic"


class DiversityAxis(StrEnum):
    embedding_diversity = "embedding_diversity"
    class_share = "class_share"
    distinct_2 = "distinct_2"


class QualityAxis(StrEnum):
    fluency = "fluency"
    reward = "reward"
    parse_rate = "parse_rate"


REMEDY_HELP = (
    "A remedy and its strengths, e.g. min_p=0.05,0.1 · temperature=0.7,1.3 · top_n_sigma=1 · xtc=0.5 · vary · "
    "few-shot · verbalized=5 · guided=0.25,0.5 (needs --guide); repeat for more. Default: every remedy but guided, "
    "at default strengths. `direct` (plain sampling) is always measured."
)


def frontier_command(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts (or give --prompts-file).")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Model to remedy; repeat for more. Default: both presets.")
    ] = None,
    remedy: Annotated[list[str] | None, typer.Option("--remedy", "-r", help=REMEDY_HELP)] = None,
    prompts_file: PromptsFile = None,
    template: Template = None,
    store_path: SetStore = None,
    resume: Resume = False,
    n: Annotated[int, typer.Option("-n", "--n", help="Texts per prompt and point.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Tokens per text (per response for verbalized).")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed of every point.")] = 0,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop string of every point but verbalized; repeat for more.")
    ] = None,
    xtc_threshold: Annotated[float, typer.Option(help="XTC's threshold for the xtc remedy.")] = 0.1,
    guide: Annotated[
        str | None, typer.Option(help="Guide model of the guided remedy: the tuned model's base (same tokenizer).")
    ] = None,
    guide_mix: Annotated[Mix, typer.Option(help="How the guided remedy mixes the two distributions.")] = Mix.geometric,
    reference: Annotated[
        str | None, typer.Option(help="Model that scores fluency (default: each model itself, on the direct prompt).")
    ] = None,
    reward: Annotated[
        str | None, typer.Option(help="Also score every text: sentiment, format or module:function.")
    ] = None,
    diversity: Annotated[DiversityAxis, typer.Option(help="The frontier's diversity axis.")] = (
        DiversityAxis.embedding_diversity
    ),
    quality: Annotated[QualityAxis, typer.Option(help="The frontier's quality axis.")] = QualityAxis.fluency,
    chat: Annotated[bool, typer.Option(help="Prompts reach chat models through their chat template.")] = False,
    system: Annotated[str | None, typer.Option(help="System message (with --chat).")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the frontier plot (PNG).")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the interactive frontier page.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every point and prompt as JSON.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Remedies for collapse (samplers, prompt strategies, Verbalized Sampling, base-guided decoding) on a
    diversity-quality frontier, over the same prompts."""
    with user_errors():
        from modescope.errors import ModescopeError
        from modescope.models import DEFAULT_MODELS
        from modescope.remedies.grid import DEFAULT_GRID, parse_grid, uses_guide

        if (prompts_file is None) == (not prompts):
            raise ModescopeError("give prompts as arguments or a prompt set with --prompts-file (one of the two)")
        check_chat_options(chat, system, "")
        points = parse_grid(remedy if remedy is not None else list(DEFAULT_GRID))
        models = model or list(DEFAULT_MODELS)
        policy = load_policy(trust_remote_code, allow_pickle)
        if uses_guide(points):
            check_guide(models, guide, guide_mix.value, policy)
        elif guide is not None:
            raise ModescopeError("--guide is for the guided remedy; add --remedy guided=0.5 or drop --guide")
        for path, what in ((png, "--png"), (html, "--html"), (json_path, "--json")):
            prepare_output(path, what)
        settings: dict[str, Any] = {
            "remedies": remedy if remedy is not None else list(DEFAULT_GRID),
            "n": n,
            "max_tokens": max_tokens,
            "seed": seed,
            "stop": stop or None,
            "xtc_threshold": xtc_threshold,
            "guide": guide,
            "guide_mix": guide_mix.value,
            "reference": reference,
            "reward": reward,
            "diversity": diversity.value,
            "quality": quality.value,
        }
        run_prompt_set(
            "frontier",
            {k: v for k, v in settings.items() if v is not None},
            prompts_file,
            prompts=list(prompts) if prompts else None,
            png=png,
            models=models,
            chat=chat,
            system=system,
            template=template,
            store_path=store_path,
            resume=resume,
            json_path=json_path,
            html=html,
            device=device,
            dtype=dtype,
            policy=policy,
            console=make_console(),
            print_output=print_frontier,
        )


def check_guide(models: list[str], guide: str | None, mix: str, policy: LoadPolicy | None = None) -> None:
    """Refuse, before any sampling, a guided remedy without a guide or with a guide of another tokenizer."""
    from modescope.errors import ModescopeError
    from modescope.models import load
    from modescope.remedies.guided import guided

    if guide is None:
        raise ModescopeError("the guided remedy needs --guide MODEL (the tuned model's base, with the same tokenizer)")
    opt_ins = policy.for_load() if policy is not None else {}
    base = load(guide, **opt_ins)
    for name in models:
        guided(load(name, **opt_ins), base, 0.5, mix)


def _estimate(e: dict[str, Any] | None, signed: bool = False) -> str:
    if not e or e.get("mean") is None:
        return "–"
    sign = "+" if signed and e["mean"] > 0 else ""
    if e.get("low") is None:
        return f"{sign}{e['mean']:.3g}"
    return f"{sign}{e['mean']:.3g} [{e['low']:.3g}, {e['high']:.3g}]"


def print_frontier(payload: dict[str, Any], console: Console) -> None:
    """One table per model: each point's diversity and quality (means over the prompts, 95% intervals), their
    change from `direct`, and whether the point is on the frontier."""
    from rich.table import Table

    x, y = payload["diversity"], payload["quality"]
    for model in payload["models"]:
        table = Table(title=f"{model}: frontier over {len(payload['prompts'])} prompts", title_justify="left")
        for column in ("point", x, f"Δ{x} vs direct", y, f"Δ{y} vs direct", "parse rate", "frontier"):
            table.add_column(column, justify="left" if column == "point" else "right")
        for p in (p for p in payload["points"] if p["model"] == model):
            table.add_row(
                p["label"],
                _estimate(p["metrics"].get(x)),
                _estimate(p["vs_direct"].get(x), signed=True),
                _estimate(p["metrics"].get(y)),
                _estimate(p["vs_direct"].get(y), signed=True),
                _estimate(p["metrics"].get("parse_rate")) if p["remedy"] == "verbalized" else "",
                "●" if p.get("on_front") else "",
            )
        console.print(table)
