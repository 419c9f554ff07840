"""What the lab measures at each checkpoint, on prompts it never trains on.

Every checkpoint samples `samples` completions (temperature 1, the policy's own distribution) of each held
prompt and reports:

- reward: the mean reward of those completions; reward_terms: the mean unweighted value of each of the
  reward's terms (the typical term measured under the reference, the start model unless another is given);
- typicality_nats: the mean over completions of their mean per-token log-probability under the start model
  (what the `typical` reward term is with the default reference; reported for every reward);
- entropy_bits: the mean per-token entropy of the policy's next-token distribution along them, in bits;
- distinct_2, self_bleu, embedding_diversity_within: diversity among the completions of one prompt, averaged
  over the prompts (as `modescope sample` computes them);
- embedding_diversity: 1 - mean pairwise cosine of all completions of all prompts pooled: it drops when
  unrelated prompts get the same kind of text;
- basin_share, basin_prompts: see `modescope.lab.basin`;
- kl_nats: the mean over completions of sum_t log pi(y_t) - log pi0(y_t), a Monte Carlo estimate of
  KL(policy || start model) per completion, in nats (pi0 = the start model: the adapter disabled);
- start_ppl: the start model's per-token perplexity on the completions, exp(-sum log pi0 / tokens);
  ppl_ratio: start_ppl divided by its value at step 0, where the completions are the start model's own (the
  fluency test: at most 2 means the optimized text is still text the start model finds about as natural);
- number_entropy_bits, number_top1, number_top1_share: the exact distribution over the integers 0..100
  after the essay's random-number prompt (`modescope.probes.distribution`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modescope.engine.decode import generate_many
from modescope.lab.basin import basin
from modescope.lab.rewards import TYPICAL, Reward, RewardError, RewardSpec, as_spec, typicality
from modescope.lab.sequences import completion_logprobs
from modescope.metrics import diversity
from modescope.metrics.embeddings import Embedder
from modescope.models.hf import HFBackend
from modescope.probes.candidates import integers
from modescope.probes.distribution import outcome_distribution


@dataclass
class ProbeSet:
    prompts: list[str]
    samples: int  # completions per prompt
    max_tokens: int
    seed: int
    number_prompt: str | None  # None skips the random-number distribution


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def probe(
    backend: HFBackend,
    start_model: Callable[[], Any],
    reward: RewardSpec | Reward,
    probes: ProbeSet,
    embedder: Embedder | None,
    start_ppl_at_zero: float | None,
    reference: HFBackend | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The checkpoint's metrics and its samples ({"prompt", "text", "reward", "typicality", "in_basin"}).

    `start_model()` is a context manager under which `backend` computes the start model (peft's
    `disable_adapter`); `start_ppl_at_zero` is the step-0 start_ppl (None at step 0 itself); `reference` is
    the typicality term's reference model, None for the start model.
    """
    spec = as_spec(reward)
    prompt_of = [i for i in range(len(probes.prompts)) for _ in range(probes.samples)]
    ids = [backend.prompt_ids(probes.prompts[i]) for i in prompt_of]
    runs = generate_many(
        backend, ids, max_tokens=probes.max_tokens, temperature=1.0, top_k_alternatives=0, seed=probes.seed
    )
    texts = [run.text for run in runs]
    completions = [[t.id for t in run.tokens] for run in runs]
    try:
        text_scores: dict[str, list[float]] | None = spec.text_scores([probes.prompts[i] for i in prompt_of], texts)
    except RewardError:
        text_scores = None  # the metrics below do not need the reward
    pad = backend.tokenizer.pad_token_id or 0
    with torch.no_grad():
        policy, mask = completion_logprobs(backend.model, pad, backend.vocab.size, ids, completions)
        with start_model():
            start, _ = completion_logprobs(backend.model, pad, backend.vocab.size, ids, completions)
        scored = start  # the typical term's reference: the start model, unless another is given
        if reference is not None:
            scored, _ = completion_logprobs(
                reference.model, reference.tokenizer.pad_token_id or 0, reference.vocab.size, ids, completions
            )
    start_typicality = typicality(start, mask)
    typical = typicality(scored.to(mask.device), mask) if reference is not None else start_typicality
    nan = float("nan")
    rewards = spec.combine(text_scores, typical) if text_scores is not None else [nan] * len(texts)
    terms = (text_scores or {name: [nan] for name in [t.name for t in spec.text_terms]}) | (
        {TYPICAL: typical} if spec.has_typical else {}
    )
    tokens = float(mask.sum())
    start_ppl = math.exp(-float((start * mask).sum()) / tokens) if tokens else float("nan")
    vectors = diversity.embed(texts, embedder)  # [n, d] unit rows
    groups = [[t for t, p in zip(texts, prompt_of, strict=True) if p == i] for i in range(len(probes.prompts))]
    vector_groups = [vectors[[k for k, p in enumerate(prompt_of) if p == i]] for i in range(len(probes.prompts))]
    found = basin(vectors, prompt_of, k=len(probes.prompts), seed=probes.seed)
    metrics: dict[str, Any] = {
        "reward": _mean(rewards),
        "reward_terms": {name: _mean(values) for name, values in terms.items()},
        "typicality_nats": _mean(start_typicality),
        "entropy_bits": diversity.mean_entropy_bits([t.entropy_bits for run in runs for t in run.tokens]),
        "distinct_2": _mean([diversity.distinct_n(g, 2) for g in groups]),
        "self_bleu": _mean([diversity.self_bleu(g) for g in groups]) if probes.samples > 1 else float("nan"),
        "embedding_diversity_within": _mean([1.0 - diversity.mean_pairwise_cosine(v) for v in vector_groups]),
        "embedding_diversity": 1.0 - diversity.mean_pairwise_cosine(vectors),
        "basin_share": found.share,
        "basin_prompts": found.prompts,
        "kl_nats": float(((policy - start) * mask).sum(-1).mean()),
        "start_ppl": start_ppl,
        "ppl_ratio": start_ppl / start_ppl_at_zero if start_ppl_at_zero else 1.0,
        "tokens_per_completion": tokens / len(texts),
    }
    if probes.number_prompt is not None:
        numbers = outcome_distribution(backend, probes.number_prompt, integers(0, 100), tokenizations="canonical")
        metrics |= {
            "number_entropy_bits": numbers.entropy_bits,
            "number_top1": numbers.top1,
            "number_top1_share": numbers.top1_share,
        }
    basin_members = set(found.members)
    samples = [
        {"prompt": probes.prompts[p], "text": t, "reward": r, "typicality": y, "in_basin": k in basin_members}
        for k, (p, t, r, y) in enumerate(zip(prompt_of, texts, rewards, typical, strict=True))
    ]
    return metrics, samples
