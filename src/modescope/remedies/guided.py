"""Base-guided decoding: sample a tuned model with its base model (or a sibling) pulling at every token.

Tuning narrows a model's next-token distributions; its base still spreads mass over the alternatives. Mixing
the two at every step, with the guide's weight alpha, is a one-knob remedy for mode collapse:

- geometric: p ∝ p_tuned^(1-alpha) · p_base^alpha (a weighted product of experts: a token either model rules
  out stays out, so the mixture keeps the tuned model's format and drops tokens the base finds absurd);
- arithmetic: p = (1-alpha) · p_tuned + alpha · p_base (a token either model allows keeps some mass).

alpha 0 is exactly the tuned model, alpha 1 exactly the base. `GuidedBackend` is itself a `Backend`, so every
probe (sampling, exact answer-set distributions, forks, multiverses) runs on the mixture unchanged: each of its
rows holds the same prefix in both models, every step forwards one token per row in each model on top of that
model's own KV cache (two forward passes per step), and the next-token log-probabilities are combined.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from modescope.errors import ModescopeError
from modescope.models.base import Backend, Capabilities, ChatPrompt, Rows
from modescope.precision import combined

Mix = Literal["geometric", "arithmetic"]
MIXES: tuple[Mix, ...] = ("geometric", "arithmetic")


@dataclass
class GuidedRows(Rows):
    """The same prefixes in every model that takes part: (tuned, base), or one of them alone when the mixture
    is one model (alpha 0 or 1, or the same model as both)."""

    parts: tuple[Rows, ...]

    @property
    def count(self) -> int:
        return self.parts[0].count

    @property
    def length(self) -> int:
        return self.parts[0].length


def _parts(rows: Rows) -> tuple[Rows, ...]:
    assert isinstance(rows, GuidedRows), "a guided backend continues only its own rows"
    return rows.parts


def mix_logprobs(tuned: torch.Tensor, base: torch.Tensor, alpha: float, mix: Mix) -> torch.Tensor:
    """The mixture's log-probabilities from both models' ([rows, vocab], natural log, -inf for impossible).

    alpha 0 and 1 return the tuned or the base tensor itself, so the pure models are reproduced bit for bit
    (the geometric formula would turn 0 · -inf into NaN there). The inputs are never modified."""
    if alpha == 0.0:
        return tuned
    if alpha == 1.0:
        return base
    if mix == "arithmetic":  # both are normalized, so their weighted sum is too: no renormalization needed
        return torch.logaddexp(tuned + math.log1p(-alpha), base + math.log(alpha))
    # both weights are positive, so -inf stays -inf and never meets +inf: no NaN before the softmax
    mixed = torch.log_softmax(torch.add(tuned * (1.0 - alpha), base, alpha=alpha), dim=-1)
    if mixed[:, 0].isnan().any():  # a row with no finite entry softmaxes to NaN everywhere
        raise ModescopeError(
            "the tuned and the guide model give no token a positive probability in common at some position, so "
            "their geometric mix is empty there; use --guide-mix arithmetic"
        )
    return mixed


def check_alpha(alpha: float) -> None:
    """Refuse a guide weight outside [0, 1] (NaN and infinities included)."""
    if not isinstance(alpha, int | float) or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ModescopeError(
            f"the guide's weight alpha must be a number from 0 (the tuned model alone) to 1 (the guide alone), "
            f"got {alpha!r}; give --guide-alpha in [0, 1]"
        )


def check_mix(mix: str) -> Mix:
    """The mix named, refusing an unknown one."""
    if mix not in MIXES:
        raise ModescopeError(f"unknown mix '{mix}'; use --guide-mix {' or '.join(MIXES)}")
    return mix


def check_full(backend: Backend, role: str) -> None:
    """Refuse a model that cannot show its whole next-token distribution at every step."""
    needs = "base-guided decoding mixes whole next-token distributions at every step"
    if backend.samples_on_server:
        raise ModescopeError(
            f"{needs}, but the {role} '{backend.name}' samples on a server; load it in-process (a preset, folder, "
            ".gguf file or Hugging Face id) instead"
        )
    if backend.capabilities.tier != "full":
        raise ModescopeError(
            f"{needs}, but the {role} '{backend.name}' shows {backend.capabilities.shows} "
            f"(tier {backend.capabilities.tier}); use an in-process model"
        )


def tokenizer_mismatch(tuned: Backend, base: Backend) -> str | None:
    """How the two models' tokenizers differ, in words, or None when they are the same (a token id must mean
    the same text in both for their distributions to be mixed)."""
    a, b = tuned.vocab, base.vocab
    if a is b:
        return None
    if a.size != b.size:
        return f"'{tuned.name}' has {a.size} tokens, '{base.name}' {b.size}"
    if a.token_bytes != b.token_bytes:
        first = next(i for i, (x, y) in enumerate(zip(a.token_bytes, b.token_bytes, strict=True)) if x != y)
        spelled = f"{a.token_bytes[first]!r} in '{tuned.name}', {b.token_bytes[first]!r} in '{base.name}'"
        return f"both have {a.size} tokens but spell them differently (token {first} is {spelled})"
    if a.special_ids != b.special_ids:
        return f"'{tuned.name}' and '{base.name}' mark different tokens as special"
    if a.eos_ids != b.eos_ids:
        return f"'{tuned.name}' ends text with tokens {sorted(a.eos_ids)}, '{base.name}' with {sorted(b.eos_ids)}"
    return None


def check_tokenizers(tuned: Backend, base: Backend) -> None:
    if (mismatch := tokenizer_mismatch(tuned, base)) is not None:
        raise ModescopeError(
            f"base-guided decoding needs the same tokenizer: {mismatch}; guide a model with its own base or sibling"
        )


class GuidedBackend(Backend):
    """The mixture of a tuned model and its guide (base) model, as one backend.

    Prompts are tokenized and chat prompts rendered by the tuned model (its chat template, its `chat_style`):
    both models have the same tokenizer, so the guide sees exactly the same ids, chat template included, and
    its own `chat_style` is ignored. Token texts, the vocabulary and EOS are the tuned model's.

    `guided` is the same with a plain-text mix name; both check every argument.
    """

    def __init__(self, tuned: Backend, base: Backend, alpha: float, mix: str = "geometric") -> None:
        check_alpha(alpha)
        self.mix = check_mix(mix)
        check_full(tuned, "tuned model")
        check_full(base, "guide")
        check_tokenizers(tuned, base)
        super().__init__(
            guided_name(tuned.name, base.name, alpha, self.mix), tuned.vocab, min(tuned.max_context, base.max_context)
        )
        self.tuned = tuned
        self.base = base
        self.alpha = float(alpha)
        self.chat_style = tuned.chat_style
        self.capabilities = Capabilities(precision=combined((tuned, base)))  # both models' precision, recorded
        # the models that are forwarded: one alone when the mixture is exactly that model
        self.active: tuple[Backend, ...] = (
            (tuned,) if alpha == 0.0 or tuned is base else (base,) if alpha == 1.0 else (tuned, base)
        )

    # --- text: the tuned model's ------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tuned.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tuned.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.tuned.token_text(token_id)

    @property
    def has_chat_template(self) -> bool:
        return self.tuned.has_chat_template

    def render_chat(self, prompt: ChatPrompt) -> str:
        return self.tuned.render_chat(prompt)

    def prompt_ids(self, prompt: str | ChatPrompt) -> list[int]:
        """The tuned model's ids of the prompt, through this view's chat style (`with_chat` sets it)."""
        if isinstance(prompt, str) and self.chat_style is not None:
            prompt = ChatPrompt(prompt, self.chat_style.system, self.chat_style.prefill)
        return self.tuned.prompt_ids(prompt)

    # --- distributions: each active model's, mixed ---------------------------------------------------------
    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Add what the models forward inside the block to this backend's stats (a stats object two views of
        one model share is counted once)."""
        stats = list({id(m.stats): m.stats for m in self.active}.values())
        before = [(s.tokens, s.calls) for s in stats]
        try:
            yield
        finally:
            for s, (tokens, calls) in zip(stats, before, strict=True):
                self.stats.tokens += s.tokens - tokens
                self.stats.calls += s.calls - calls

    def _combine(self, logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(logprobs) == 1:
            return logprobs[0]
        return mix_logprobs(logprobs[0], logprobs[1], self.alpha, self.mix)

    def _each(self, step: Callable[[int, Backend], tuple[Rows, torch.Tensor]]) -> tuple[Rows, torch.Tensor]:
        """`step(k, model)` for each active model (k indexes the rows' parts), as one row batch and the mix."""
        with self._counted():
            results = [step(k, model) for k, model in enumerate(self.active)]
        return GuidedRows(tuple(rows for rows, _ in results)), self._combine([lp for _, lp in results])

    def start(self, prompt: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        return self._each(lambda _, model: model.start(prompt))

    def start_many(self, prompts: Sequence[Sequence[int]]) -> tuple[Rows, torch.Tensor]:
        return self._each(lambda _, model: model.start_many(prompts))

    def extend(self, rows: Rows, parents: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        return self._each(lambda k, model: model.extend(_parts(rows)[k], parents, tokens))

    def advance(self, rows: Rows, keep: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        return self._each(lambda k, model: model.advance(_parts(rows)[k], keep, tokens))

    def concat(self, parts: Sequence[Rows]) -> Rows:
        return GuidedRows(tuple(m.concat([_parts(p)[k] for p in parts]) for k, m in enumerate(self.active)))

    def gather(self, parts: Sequence[tuple[Rows, Sequence[int]]]) -> Rows:
        return GuidedRows(
            tuple(m.gather([(_parts(rows)[k], indices) for rows, indices in parts]) for k, m in enumerate(self.active))
        )

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        with self._counted():
            logprobs = [model.next_logprobs(prefixes) for model in self.active]
        return self._combine(logprobs)

    def fingerprint(self) -> str | None:
        """Both models' fingerprints with alpha and the mix; None when either model has none."""
        tuned, base = self.tuned.fingerprint(), self.base.fingerprint()
        if tuned is None or base is None:
            return None
        return hashlib.sha256(f"guided|{self.mix}|{self.alpha!r}|{tuned}|{base}".encode()).hexdigest()

    def close(self) -> None:
        """Close both models (the mixture is the one user of the models it was given)."""
        self.tuned.close()
        if self.base is not self.tuned:
            self.base.close()


def guided_name(tuned: str, base: str, alpha: float, mix: Mix) -> str:
    """`TUNED~MIXALPHA~BASE`, e.g. `smollm2-135m-sentiment-rl~geometric0.5~smollm2-135m-instruct`: the tuned
    model mixed with weight alpha of the guide."""
    return f"{tuned}~{mix}{alpha:g}~{base}"


def guided(tuned: Backend, base: Backend, alpha: float, mix: str = "geometric") -> GuidedBackend:
    """The tuned model guided by `base` with weight `alpha` in [0, 1] (0: the tuned model, 1: the base), mixed
    `geometric`ally (p_tuned^(1-alpha) · p_base^alpha, renormalized) or `arithmetic`ally ((1-alpha) p_tuned +
    alpha p_base). Both must be in-process models with the same tokenizer; the same model as both is allowed
    (the mixture is then that model). Raises ModescopeError saying what to change otherwise."""
    return GuidedBackend(tuned, base, alpha, mix)
