"""Measure a tuned model against its start model on held-out open-ended prompts: is it more collapsed, and
still fluent?

For the first --prompts prompts of the built-in `open-ended` prompt set (64 instructions the lab never trains
on), both models draw --n completions of --max-tokens tokens at temperature 1 with the same seed, from the
plain prompt (no chat template: the way `modescope lab` samples during training), or with --chat through the
models' chat template (the way an instruct model is asked), through
`modescope.probes.sampling.sample_prompts`. Per prompt it compares:

- mean token entropy (bits): the entropy of each model's next-token distribution along its own samples;
- embedding diversity: 1 - mean pairwise cosine of the n completions' all-MiniLM-L6-v2 embeddings;

and reports the share of prompts on which the tuned model is lower on each. Over the whole set:

- the exact distribution over the integers 0..100 after the lab's random-number prompt
  (`modescope.lab.prompts.NUMBER_PROMPT`, canonical tokenizations, as the lab's checkpoint probe measures it):
  entropy, top-1 answer and its share;
- the perplexity ratio: the reference model's perplexity (exp of minus its mean log-probability per token,
  pooled over every completion token, `modescope.engine.score.continuation_logprobs`) on the tuned model's
  samples, divided by the same on the reference's own samples (the lab's `ppl_ratio`; at most 2 is fluent);
- distinct-2, NoveltyBench equivalence classes (ROUGE-1), mean tokens and empty completions per prompt, to
  say what the collapse looks like. In plain text the instruct model often ends at once after an instruction
  (an empty completion, EOS first); identical empty completions make a prompt's embedding diversity low, so
  the share of prompts lower on embedding diversity is also given over the prompts where the start model
  did so in at most one sample.

Several --model options are each compared with one sample of the reference. Run it as
`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/measure_preset.py --model smollm2-135m-typical-rl --json out.json`.
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model",
        action="append",
        help="a tuned model (preset, BASE+ADAPTER); repeat to compare several with one reference sample "
        "(default: smollm2-135m-typical-rl)",
    )
    parser.add_argument("--reference", default="smollm2-135m-instruct", help="the start model it is compared with")
    parser.add_argument("--prompts", type=int, default=64, help="how many of the open-ended prompts (the first N)")
    parser.add_argument("--prompt-set", default="open-ended", help="built-in prompt set or prompts file")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per completion")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the same for both models)")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="send each prompt through the chat template as the user message (the 0..100 probe stays plain)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.model = args.model or ["smollm2-135m-typical-rl"]
    if args.prompts < 1 or args.n < 2 or args.max_tokens < 1:
        parser.error("--prompts and --max-tokens must be at least 1, --n at least 2")
    return args


def measure(backend: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One model's samples of every prompt, their metrics, and its 0..100 distribution."""
    from modescope.engine.samplers import SamplerSettings
    from modescope.lab.prompts import NUMBER_PROMPT
    from modescope.probes.candidates import integers
    from modescope.probes.distribution import outcome_distribution
    from modescope.probes.sampling import sample_prompts

    began = time.perf_counter()
    results = sample_prompts(
        backend.with_chat() if args.chat else backend,
        prompts,
        n=args.n,
        max_tokens=args.max_tokens,
        sampler=SamplerSettings.make(temperature=1.0),
        seed=args.seed,
        top_k_alternatives=0,
    )
    numbers = outcome_distribution(backend, NUMBER_PROMPT, integers(0, 100), tokenizations="canonical")
    return {
        "samples": [r.models[0] for r in results],
        "numbers": numbers,
        "seconds": time.perf_counter() - began,
    }


def perplexity(scorer: Any, prompts: list[str], samples: list[Any]) -> float:
    """The scorer's per-token perplexity on every completion of every prompt, tokens pooled."""
    from modescope.engine.score import continuation_logprobs

    ids, tokens = [], []
    for prompt, group in zip(prompts, samples, strict=True):
        for completion in group.completions:
            ids.append(scorer.prompt_ids(prompt))
            tokens.append([t.id for t in completion.tokens])
    scores = continuation_logprobs(scorer, ids, tokens)
    count = sum(len(s) for s in scores)
    return math.exp(-math.fsum(x for s in scores for x in s) / count)


def compare(
    name: str,
    items: list[Any],
    start: dict[str, Any],
    tuned: dict[str, Any],
    ppl_own: float,
    ppl_tuned: float,
    args: Any,
) -> dict[str, Any]:
    """The per-prompt rows and the summary of one tuned model against the reference."""
    rows = []
    for item, b, a in zip(items, start["samples"], tuned["samples"], strict=True):
        rows.append(
            {
                "id": item.id,
                "prompt": item.text,
                "entropy_start": b.metrics["mean_entropy_bits"],
                "entropy_tuned": a.metrics["mean_entropy_bits"],
                "embedding_diversity_start": b.metrics["embedding_diversity"],
                "embedding_diversity_tuned": a.metrics["embedding_diversity"],
                "distinct_2_start": b.metrics["distinct_2"],
                "distinct_2_tuned": a.metrics["distinct_2"],
                "classes_start": b.metrics["equivalence_classes"],
                "classes_tuned": a.metrics["equivalence_classes"],
                "tokens_start": b.metrics["mean_tokens"],
                "tokens_tuned": a.metrics["mean_tokens"],
                "empty_tuned": sum(not t.strip() for t in a.texts),
                "empty_start": sum(not t.strip() for t in b.texts),
                "texts_tuned": a.texts,
                "texts_start": b.texts,
            }
        )

    def share(key: str) -> float:
        return sum(r[f"{key}_tuned"] < r[f"{key}_start"] for r in rows) / len(rows)

    def mean(key: str) -> float:
        return math.fsum(r[key] for r in rows) / len(rows)

    numbers_start, numbers_tuned = start["numbers"], tuned["numbers"]
    fair = [r for r in rows if r["empty_start"] <= 1]
    summary = {
        "model": name,
        "reference": args.reference,
        "chat": args.chat,
        "prompt_set": args.prompt_set,
        "prompts": len(rows),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "share_lower_entropy": share("entropy"),
        "share_lower_embedding_diversity": share("embedding_diversity"),
        "share_lower_both": sum(
            r["entropy_tuned"] < r["entropy_start"] and r["embedding_diversity_tuned"] < r["embedding_diversity_start"]
            for r in rows
        )
        / len(rows),
        # the start model often ends at once on these plain instructions (EOS first: an empty completion), and
        # identical empty completions make its diversity low; the share again over the prompts where it did so in
        # at most one sample says how much of the comparison that decides
        "prompts_start_rarely_empty": len(fair),
        "share_lower_embedding_diversity_start_rarely_empty": (
            sum(r["embedding_diversity_tuned"] < r["embedding_diversity_start"] for r in fair) / len(fair)
            if fair
            else math.nan
        ),
        "number_top1_start": numbers_start.top1,
        "number_top1_share_start": numbers_start.top1_share,
        "number_top1_tuned": numbers_tuned.top1,
        "number_top1_share_tuned": numbers_tuned.top1_share,
        "number_entropy_bits_start": numbers_start.entropy_bits,
        "number_entropy_bits_tuned": numbers_tuned.entropy_bits,
        "start_ppl_on_own_samples": ppl_own,
        "start_ppl_on_tuned_samples": ppl_tuned,
        "ppl_ratio": ppl_tuned / ppl_own,
        "seconds_sampling": {"start": start["seconds"], "tuned": tuned["seconds"]},
    }
    for key in ("entropy", "embedding_diversity", "distinct_2", "classes", "tokens", "empty"):
        summary[f"mean_{key}_start"] = mean(f"{key}_start")
        summary[f"mean_{key}_tuned"] = mean(f"{key}_tuned")
    return {"summary": summary, "per_prompt": rows}


def show(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    summary, rows = result["summary"], result["per_prompt"]
    n = summary["n"]
    per_prompt = Table(
        title=f"per prompt: {summary['reference']} -> {summary['model']} ({n} x {summary['max_tokens']} tokens)"
    )
    for column in ("id", "entropy (bits)", "embedding diversity", "distinct-2", "classes", "first tuned sample"):
        per_prompt.add_column(column)
    for r in rows:
        per_prompt.add_row(
            r["id"],
            f"{r['entropy_start']:.2f} -> {r['entropy_tuned']:.2f}",
            f"{r['embedding_diversity_start']:.3f} -> {r['embedding_diversity_tuned']:.3f}",
            f"{r['distinct_2_start']:.2f} -> {r['distinct_2_tuned']:.2f}",
            f"{r['classes_start']:.0f} -> {r['classes_tuned']:.0f}",
            repr(r["texts_tuned"][0][:60]),
        )
    console.print(per_prompt)
    table = Table(title=f"summary over {summary['prompts']} held-out prompts")
    table.add_column("measure")
    table.add_column(summary["reference"])
    table.add_column(summary["model"])
    for label, key, form in (
        ("mean token entropy (bits)", "entropy", ".3f"),
        ("embedding diversity (within a prompt)", "embedding_diversity", ".3f"),
        ("distinct-2", "distinct_2", ".3f"),
        (f"equivalence classes (of {n})", "classes", ".2f"),
        ("tokens per completion", "tokens", ".1f"),
        (f"empty completions (of {n})", "empty", ".2f"),
    ):
        table.add_row(label, format(summary[f"mean_{key}_start"], form), format(summary[f"mean_{key}_tuned"], form))
    table.add_row(
        "0..100: top-1 (share), entropy",
        f"{summary['number_top1_start']} ({summary['number_top1_share_start']:.3f}), "
        f"{summary['number_entropy_bits_start']:.2f} bits",
        f"{summary['number_top1_tuned']} ({summary['number_top1_share_tuned']:.3f}), "
        f"{summary['number_entropy_bits_tuned']:.2f} bits",
    )
    table.add_row(
        f"{summary['reference']} perplexity on the samples",
        f"{summary['start_ppl_on_own_samples']:.2f}",
        f"{summary['start_ppl_on_tuned_samples']:.2f}",
    )
    console.print(table)
    console.print(
        f"{summary['model']}: lower on entropy for {summary['share_lower_entropy']:.0%} of prompts, on embedding "
        f"diversity for {summary['share_lower_embedding_diversity']:.0%}, on both for {summary['share_lower_both']:.0%}; "
        f"top-1 share {summary['number_top1_share_start']:.3f} -> {summary['number_top1_share_tuned']:.3f}; "
        f"ppl ratio {summary['ppl_ratio']:.2f}; lower on embedding diversity for "
        f"{summary['share_lower_embedding_diversity_start_rarely_empty']:.0%} of the "
        f"{summary['prompts_start_rarely_empty']} prompts where {summary['reference']} ended at once in at most one "
        "sample"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.console import Console

    import modescope as ms
    from modescope.lab.train import torch_threads_from_env
    from modescope.suites.prompt_sets import load_prompts_file

    torch_threads_from_env()
    console = Console(highlight=False, width=160)
    items = load_prompts_file(args.prompt_set)[: args.prompts]
    prompts = [item.text for item in items]
    with console.status(f"loading {args.reference}"):
        start = ms.load(args.reference, device="cpu")
    if start.chat_style is not None:
        raise SystemExit(f"{args.reference} has a chat style set; pass --chat instead")
    with console.status(f"sampling {len(prompts)} prompts x {args.n} from {args.reference}"):
        own = measure(start, prompts, args)
        scorer = start.with_chat() if args.chat else start
        ppl_own = perplexity(scorer, prompts, own["samples"])
    results = []
    for name in args.model:
        with console.status(f"loading {name}"):
            tuned = ms.load(name, device="cpu")
        if tuned.chat_style is not None:
            raise SystemExit(f"{name} has a chat style set; pass --chat instead")
        with console.status(f"sampling {len(prompts)} prompts x {args.n} from {name}"):
            measured = measure(tuned, prompts, args)
        with console.status(f"scoring its samples under {args.reference}"):
            ppl_tuned = perplexity(scorer, prompts, measured["samples"])
        result = compare(name, items, own, measured, ppl_own, ppl_tuned, args)
        show(console, result)
        results.append(result)
        del tuned
        if args.json:  # after each model, so a long comparison keeps what it has measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            data = {"models": results}
            args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.json:
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
