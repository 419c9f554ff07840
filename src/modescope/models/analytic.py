"""A backend whose next-token distributions are known in closed form.

Used to check exactness (to 1e-9 in float64) and to run the CLI and probes without a real model. The
vocabulary is a list of strings, and the logits after any prefix are a fixed pseudo-random function of that
prefix, so brute-force scoring of any token sequence can be compared with the engine's result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from modescope.models.base import Backend
from modescope.models.vocab import Vocabulary


class AnalyticBackend(Backend):
    """Toy model over a string vocabulary; `eos` is the special end token (id 0)."""

    def __init__(
        self,
        tokens: Sequence[str],
        name: str = "analytic",
        seed: int = 0,
        sharpness: float = 3.0,
        max_context: int = 4096,
    ) -> None:
        self.pieces = ["<eos>", *tokens]
        vocab = Vocabulary(
            token_bytes=[b""] + [t.encode("utf-8") for t in tokens],
            special_ids=frozenset({0}),
            eos_ids=frozenset({0}),
        )
        super().__init__(name, vocab, max_context)
        self.seed = seed
        self.sharpness = sharpness

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Greedy longest-match tokenization (the 'canonical' encoding of this toy model)."""
        data = text.encode("utf-8")
        ids: list[int] = []
        while data:
            best = max(
                (i for i, b in enumerate(self.vocab.token_bytes) if b and data.startswith(b)),
                key=lambda i: len(self.vocab.token_bytes[i]),
                default=None,
            )
            if best is None:
                raise ValueError(f"cannot tokenize {data!r}")
            ids.append(best)
            data = data[len(self.vocab.token_bytes[best]) :]
        return ids

    def token_text(self, token_id: int) -> str:
        return self.pieces[token_id]

    def logits(self, prefix: Sequence[int]) -> np.ndarray:
        """The closed-form logits after `prefix`: a seeded Gaussian vector scaled by `sharpness`."""
        digest = hashlib.sha256(f"{self.seed}:{','.join(map(str, prefix))}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return self.sharpness * rng.standard_normal(self.vocab.size)

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        self.stats.add(sum(len(p) for p in prefixes))
        logits = torch.tensor(np.stack([self.logits(p) for p in prefixes]), dtype=torch.float64)
        return torch.log_softmax(logits, dim=-1)

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int]) -> float:
        """Brute-force log-probability of `continuation` after `prefix`, token by token."""
        total = 0.0
        context = list(prefix)
        for token in continuation:
            logits = self.logits(context)
            total += float(logits[token] - np.logaddexp.reduce(logits))
            context.append(token)
        return total


class TransitionBackend(AnalyticBackend):
    """A Markov toy model: the next-token distribution depends only on the last token, by a hand-written table.

    `table[a][b]` is P(b | last token a) for token strings a, b ("<eos>" ends the text); probabilities a row
    leaves unassigned are spread evenly over every other token. Used to build models with a known attractor.
    """

    def __init__(self, tokens: Sequence[str], table: dict[str, dict[str, float]], name: str = "transitions") -> None:
        super().__init__(tokens, name=name)
        index = {piece: i for i, piece in enumerate(self.pieces)}
        self.rows: dict[int, np.ndarray] = {}
        for source, targets in table.items():
            probs = np.zeros(self.vocab.size)
            for target, p in targets.items():
                probs[index[target]] = p
            rest = max(1.0 - probs.sum(), 1e-9)
            unassigned = probs == 0
            probs[unassigned] = rest / unassigned.sum()
            self.rows[index[source]] = np.log(probs / probs.sum())

    def logits(self, prefix: Sequence[int]) -> np.ndarray:
        if prefix and prefix[-1] in self.rows:
            return self.rows[prefix[-1]]
        return np.zeros(self.vocab.size)  # uniform after an unlisted token


# every printable ASCII character (so any such prompt encodes), the numbers 10..100, and a few words
TOY_TOKENS = list(
    dict.fromkeys(
        [
            *[chr(c) for c in range(32, 127)],
            "\n",
            *[str(i) for i in range(10, 101)],
            *[" yes", " no", " bugs", " real", " I", " think", " they", " are", " not", " maybe", " it", " is"],
            *[" looks", " like", " a", " line", " the", " number", " random"],
        ]
    )
)


def toy_model(name: str) -> AnalyticBackend:
    """`toy:NAME`: an analytic model over digits, numbers 10..100 and a few words, seeded by NAME."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return AnalyticBackend(TOY_TOKENS, name=name, seed=seed, sharpness=2.5)
