"""The narrow model interface every probe is built on.

A backend answers "what is the full next-token distribution after each of these token prefixes?". The
engine builds the second question on top of it, "continue these prefixes and record what was chosen and what
else was likely" (`modescope.engine.decode.generate`); this layer knows nothing of the engine above it.
Prefixes are advanced level by level as `Rows`: a batch of states that all extend one prompt, so a backend
with a KV cache can encode the prompt once and let every child reuse its parent's cache.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from modescope.errors import ModescopeError
from modescope.models.lm_head import exact_set_sums
from modescope.models.vocab import Vocabulary

Tier = Literal["full", "top-k", "sample-only"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can answer, detected when it connects (in-process models can answer everything).

    - full: whole next-token distributions, so every probe is exact;
    - top-k: only the `top_k` most likely tokens per position, so probabilities become bounds;
    - sample-only: continuations without probabilities (sampling and text metrics only).
    """

    tier: Tier = "full"
    top_k: int | None = None  # alternatives shown per position; None: the whole vocabulary
    scores_sequences: bool = True  # log-probabilities of given tokens (vLLM prompt_logprobs, echo)
    chat_only: bool = False  # only a chat endpoint: prompts go as messages, through the server's template
    server: str | None = None  # "NAME@URL" for a model behind a server; None in-process
    # the weights' floating-point type ("float32", "bfloat16"): results computed below float32 are labelled
    # as such (see modescope.precision); None when unknown (a server does not say)
    precision: str | None = None

    @property
    def shows(self) -> str:
        """How much of each next-token distribution the backend shows, in words."""
        if self.tier == "full":
            return "whole distribution"
        if self.tier == "top-k":
            return f"top-{self.top_k} alternatives"
        return "no probabilities"

    def metadata(self) -> dict[str, Any]:
        """What every result records about the backend that produced it."""
        return {
            "tier": self.tier,
            "top_k": self.top_k,
            "scores_sequences": self.scores_sequences,
            "chat_only": self.chat_only,
            # a chat-only server renders chat prompts with its own template; elsewhere modescope renders them
            # with the local tokenizer's template and sends token ids
            "chat_template": "server" if self.chat_only else "local",
            "server": self.server,
            "precision": self.precision,
        }

    def require(self, what: str, model: str, tier: Tier = "full") -> None:
        """Refuse a probe that needs more than this backend shows, naming the missing capability."""
        order = {"sample-only": 0, "top-k": 1, "full": 2}
        if order[self.tier] < order[tier]:
            needs = "whole next-token distributions" if tier == "full" else "token log-probabilities"
            raise ModescopeError(
                f"{what} needs {needs} (tier {tier}), but '{model}' shows {self.shows} (tier {self.tier}); "
                "use a server that returns them (vLLM with --max-logprobs -1) or an in-process model"
            )


FULL = Capabilities()


@dataclass
class ServerToken:
    """One token a server generated: its raw log-probability and the alternatives the server showed."""

    id: int
    logprob: float  # natural log, under the raw model (NaN when the server gave none)
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, raw log-probability), best first


@dataclass
class ServerCompletion:
    tokens: list[ServerToken]
    finish_reason: str  # "eos", "stop" or "length"


@dataclass
class Answer:
    """What a backend says about one token sequence (see `Backend.query`)."""

    scores: list[float] | None  # log p(token i | tokens < i), nats, for i >= 1; None when not asked
    shown_ids: torch.Tensor | None  # ids of the next-token alternatives shown, best first
    shown_logprobs: torch.Tensor | None  # their log-probabilities (float64), same order


@dataclass(frozen=True)
class ChatPrompt:
    """A prompt rendered through a chat model's template."""

    user: str
    system: str | None = None
    prefill: str = ""


def require_one_prompt(prompt: object, function: str, kind: str) -> None:
    """Refuse anything but one prompt (text or a `ChatPrompt`) for a probe function that takes one; a list of
    prompts goes to `ms.over_prompts(kind, ...)`, which says so."""
    if not isinstance(prompt, str | ChatPrompt):
        raise ModescopeError(
            f"{function} takes one prompt (text or a ChatPrompt); for a list of prompts use "
            f"ms.over_prompts('{kind}', models, prompts)"
        )


class Rows(ABC):
    """A batch of token prefixes that all extend the same prompt (opaque to callers)."""

    @property
    @abstractmethod
    def count(self) -> int: ...

    @property
    @abstractmethod
    def length(self) -> int:
        """Tokens in each prefix, prompt included (every row of a batch has the same length)."""


@dataclass
class PrefixRows(Rows):
    """Rows kept as plain token lists: for backends without a cache."""

    prefixes: list[tuple[int, ...]]

    @property
    def count(self) -> int:
        return len(self.prefixes)

    @property
    def length(self) -> int:
        return len(self.prefixes[0]) if self.prefixes else 0


@dataclass
class TreeStep:
    """What a tree call gives for its nodes: next-token log-probabilities [nodes, vocab], or [nodes, columns] for
    a tree started with `columns` (the vocabulary ids of its columns, in that order); and, when the tree was
    started with token sets, each set's total probability after each node [nodes, sets], float64, exact even
    when tiny (`lm_head.exact_set_sums`)."""

    logprobs: torch.Tensor
    set_sums: torch.Tensor | None = None
    columns: torch.Tensor | None = None
    _place_of: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def then(self, other: TreeStep | None) -> TreeStep:
        """This step's rows followed by `other`'s (the same columns)."""
        if other is None:
            return self
        sums = None
        if self.set_sums is not None and other.set_sums is not None:
            sums = torch.cat([self.set_sums, other.set_sums])
        return TreeStep(torch.cat([self.logprobs, other.logprobs]), sums, self.columns)

    @classmethod
    def of(
        cls, logprobs: torch.Tensor, token_sets: torch.Tensor | None = None, columns: torch.Tensor | None = None
    ) -> TreeStep:
        """The step of whole rows of log-probabilities [rows, vocab]: their sums over `token_sets`
        (`token_set_sums`), and only `columns` of them kept (all for None)."""
        kept = logprobs if columns is None else logprobs.index_select(1, columns.to(logprobs.device))
        return cls(kept, token_set_sums(logprobs, token_sets), columns)

    def row(self, row: int) -> StepRow:
        """Row `row`'s log-probabilities, looked up by token id (`step.row(r)[token]`)."""
        return StepRow(self.logprobs[row], self._places())

    def at(self, row: int, tokens: Sequence[int]) -> list[float]:
        """Row `row`'s log-probabilities of `tokens` (one gather)."""
        if not tokens:
            return []
        places = self._places()
        index = [places[t] for t in tokens] if places is not None else list(tokens)
        return self.logprobs[row, index].tolist()

    def _places(self) -> dict[int, int] | None:
        if self.columns is not None and self._place_of is None:
            self._place_of = {token: k for k, token in enumerate(self.columns.tolist())}
        return self._place_of


@dataclass(frozen=True)
class StepRow:
    """One node's log-probabilities from a `TreeStep`, by token id (only its columns when it has some)."""

    logprobs: torch.Tensor
    places: dict[int, int] | None

    def __getitem__(self, token: int) -> torch.Tensor:
        return self.logprobs[token if self.places is None else self.places[token]]


def token_set_sums(logprobs: torch.Tensor, token_sets: torch.Tensor | None) -> torch.Tensor | None:
    """Each token set's total probability [rows, sets] (float64) from log-probabilities [rows, vocab], summed in
    cascades (`Tensor.sum`), exact even when tiny (`lm_head.exact_set_sums`); None without sets. `token_sets`
    [sets, vocab] holds 0/1 weights."""
    if token_sets is None:
        return None
    probs = logprobs.exp()
    weights = token_sets.to(probs.dtype)
    sums = torch.stack([(probs * w).sum(-1) for w in weights], dim=1).double()
    zero = torch.zeros(len(logprobs), 1, dtype=torch.float64)
    return exact_set_sums(sums, token_sets, zero, lambda row: logprobs[row])


@dataclass
class ForwardStats:
    """What a backend actually computed: token positions forwarded and forward calls made."""

    tokens: int = 0
    calls: int = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        self.calls += 1


class Backend(ABC):
    """A causal language model with its tokenizer."""

    name: str
    vocab: Vocabulary
    max_context: int
    stats: ForwardStats
    # when set, plain-text prompts are rendered as this chat message's template (see `with_chat`)
    chat_style: ChatPrompt | None = None
    capabilities: Capabilities = FULL
    # a backend that samples on its own (a server) answers `sample_on_server` instead of being decoded here
    samples_on_server: bool = False
    # while True, a top-k backend answers next_logprobs with the shown tokens only (the rest -inf)
    partial_ok: bool = False

    def __init__(self, name: str, vocab: Vocabulary, max_context: int) -> None:
        self.name = name
        self.vocab = vocab
        self.max_context = max_context
        self.stats = ForwardStats()

    # --- text <-> tokens -------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens` the tokenizer adds its BOS where it does by default."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token sequence (special tokens dropped)."""
        data = b"".join(self.vocab.token_bytes[i] for i in ids)
        return data.decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """Text of one token; special tokens show as their name."""
        return self.decode([token_id])

    @property
    def has_chat_template(self) -> bool:
        return False

    def render_chat(self, prompt: ChatPrompt) -> str:
        """The chat template's text for a user message (and optional system message), ready for the
        assistant's reply, followed by the assistant prefill."""
        raise ModescopeError(f"model '{self.name}' has no chat template; drop --chat to use a plain prompt")

    def with_chat(self, system: str | None = None, prefill: str = "") -> Backend:
        """A view of this model (sharing its weights) whose plain-text prompts go through the chat template
        as the user message, with this system message and assistant prefill."""
        if not self.has_chat_template:
            raise ModescopeError(f"model '{self.name}' has no chat template; use it with plain prompts")
        view = copy.copy(self)
        view.chat_style = ChatPrompt("", system, prefill)
        return view

    def prompt_ids(self, prompt: str | ChatPrompt) -> list[int]:
        """Token ids of a plain prompt (tokenizer defaults, BOS included) or a chat prompt (the template
        already holds its special tokens, so none are added)."""
        if isinstance(prompt, str) and self.chat_style is not None:
            prompt = ChatPrompt(prompt, self.chat_style.system, self.chat_style.prefill)
        if isinstance(prompt, ChatPrompt):
            return self.encode(self.render_chat(prompt), add_special_tokens=False)
        return self.encode(prompt, add_special_tokens=True)

    # --- distributions ---------------------------------------------------------------------------------
    def start(self, prompt: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        """Encode a prompt once. Returns one row and its next-token log-probabilities, shape [1, vocab]."""
        if not prompt:
            raise ModescopeError("the prompt encodes to no tokens; give a non-empty prompt")
        self.check_length(len(prompt))
        rows = PrefixRows([tuple(prompt)])
        return rows, self.next_logprobs(rows.prefixes)

    def start_many(self, prompts: Sequence[Sequence[int]]) -> tuple[Rows, torch.Tensor]:
        """Encode several prompts, of any lengths, as one batch of rows: shape [len(prompts), vocab]."""
        if not prompts or not all(prompts):
            raise ModescopeError("every prompt must encode to at least one token")
        for prompt in prompts:
            self.check_length(len(prompt))
        rows = PrefixRows([tuple(p) for p in prompts])
        return rows, self.next_logprobs(rows.prefixes)

    def extend(self, rows: Rows, parents: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        """Child rows: row k is `rows[parents[k]]` followed by `tokens[k]`.

        Returns the new rows and their next-token log-probabilities, shape [len(tokens), vocab], float32 or
        float64 (callers sum them in float64).
        """
        assert isinstance(rows, PrefixRows)
        prefixes = [rows.prefixes[p] + (t,) for p, t in zip(parents, tokens, strict=True)]
        self.check_length(max((len(p) for p in prefixes), default=0))
        return PrefixRows(prefixes), self.next_logprobs(prefixes)

    def advance(self, rows: Rows, keep: Sequence[int], tokens: Sequence[int]) -> tuple[Rows, torch.Tensor]:
        """Like `extend`, for decoding: row k of the result is `rows[keep[k]]` followed by `tokens[k]`, and
        `rows` is consumed (the caller never uses it again), so a backend may grow its cache in place."""
        return self.extend(rows, keep, tokens)

    def concat(self, parts: Sequence[Rows]) -> Rows:
        """Join batches of equal prefix length into one (used when a level is computed in chunks)."""
        joined: list[tuple[int, ...]] = []
        for part in parts:
            assert isinstance(part, PrefixRows)
            joined.extend(part.prefixes)
        return PrefixRows(joined)

    def gather(self, parts: Sequence[tuple[Rows, Sequence[int]]]) -> Rows:
        """A new batch made of chosen rows of several batches of equal prefix length, in order (used by
        best-first expansion, whose next nodes come from different earlier batches). The parts are not
        consumed, and the result may be consumed by `advance`."""
        chosen: list[tuple[int, ...]] = []
        for rows, indices in parts:
            assert isinstance(rows, PrefixRows)
            chosen.extend(rows.prefixes[i] for i in indices)
        return PrefixRows(chosen)

    def tree_start(
        self,
        prompt: Sequence[int],
        parents: Sequence[int],
        tokens: Sequence[int],
        token_sets: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> tuple[Any, TreeStep] | None:
        """Start a tree of tree calls (`tree_extend`) below a prompt with its first nodes (as `tree_extend` takes
        them), in one forward pass where the prompt is short: the tree's state, and the step of the prompt's last
        position (its next-token distribution) followed by one row per node. None, before any work, from a
        backend without tree calls (the engine then goes level by level with `extend`). `token_sets`
        [sets, vocab] (0/1 weights) are summed over at every node of the tree (`TreeStep.set_sums`); with
        `columns` (vocabulary ids) every step keeps only those log-probabilities (`TreeStep.columns`)."""
        return None

    def tree_extend(self, tree: Any, parents: Sequence[int], tokens: Sequence[int]) -> TreeStep:
        """Add nodes to a tree from `tree_start`: node k (numbered on from the nodes added before) is token
        `tokens[k]` after node `parents[k]`, or after the prompt for -1; a parent comes before its children,
        in this call or an earlier one. Each new node's step comes from one forward pass that copies no cache
        (`models.tree_attention`)."""
        raise NotImplementedError(f"model '{self.name}' takes no tree calls")

    @abstractmethod
    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """Full next-token log-probabilities after each prefix, shape [len(prefixes), vocab], float32 or
        float64."""

    def sample_on_server(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        max_tokens: int,
        params: dict[str, float | int],
        alternatives: int,
        seed: int | None,
        stop: Sequence[str],
    ) -> list[list[ServerCompletion]]:
        """n continuations of each prompt sampled by the backend itself with `params` (temperature, top_p,
        top_k, min_p), recording `alternatives` alternatives per token. Only for `samples_on_server`."""
        raise NotImplementedError(f"model '{self.name}' does not sample on a server")

    def server_alternatives(self, alternatives: int) -> int:
        """How many best alternatives per token `sample_on_server` asks for (0: none)."""
        return 0

    def query(self, sequences: Sequence[Sequence[int]], top: int | None, score: bool) -> list[Answer]:
        """For each sequence: with `score`, the log-probability of every token after the first; and the
        next-token alternatives: `top=None` the whole distribution, `top=k` the k best, `top=0` none.

        A server answers this in few requests; in-process it is computed from `next_logprobs` of every
        prefix (for tests, not speed)."""
        answers = []
        for sequence in sequences:
            scores = None
            if score:
                steps = self.next_logprobs([sequence[:i] for i in range(1, len(sequence))])
                scores = [float(steps[i - 1, token]) for i, token in enumerate(sequence) if i > 0]
            ids = values = None
            if top != 0:
                logprobs = self.next_logprobs([sequence])[0]
                values, ids = logprobs.topk(min(top or logprobs.numel(), logprobs.numel()))
            answers.append(Answer(scores, ids, values))
        return answers

    def check_length(self, length: int) -> None:
        if length > self.max_context:
            raise ModescopeError(
                f"model '{self.name}' has a context of {self.max_context} tokens but this needs {length}; "
                "shorten the prompt or the candidates"
            )

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Let go of what the backend holds outside the process's memory (a server backend's connections)."""

    def fingerprint(self) -> str | None:
        """A stable identity of the weights and tokenizer, for results cached on disk; None (the default)
        when there is none, and then nothing of this model is cached across processes."""
        return None


@contextmanager
def partial_distributions(backend: Backend) -> Iterator[bool]:
    """Let a top-k backend answer `next_logprobs` with only the tokens it shows (every other entry -inf).

    Yields whether the distributions are partial, so the caller turns what it computes into bounds. Only
    probes that handle the missing mass open this block; elsewhere such a backend refuses.
    """
    partial = backend.capabilities.tier != "full"
    previous = backend.partial_ok
    backend.partial_ok = True
    try:
        yield partial
    finally:
        backend.partial_ok = previous
