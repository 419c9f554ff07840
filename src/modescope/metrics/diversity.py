"""Diversity of a group of texts (typically n samples of one prompt), and token-level concentration.

Lexical metrics (distinct-n, EAD, self-BLEU, compression ratio), semantic ones (embedding diversity,
NoveltyBench equivalence classes) and per-token statistics of sampled continuations. Every n-gram metric here
uses one tokenization, `tokenize`: lowercase, then words (runs of letters, digits and underscores, keeping
inner apostrophes as in "don't") and single punctuation marks. N-grams never cross the boundary between two
texts. Self-BLEU and ROUGE-1 keep the tokenizations of sacrebleu and rouge-score, so that their numbers are the
ones those packages give.

A metric that needs at least two texts (self-BLEU, embedding diversity) is NaN for a single text, and an
n-gram ratio is NaN when the texts hold no n-gram at all: undefined, not zero.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from modescope.errors import ModescopeError
from modescope.metrics.embeddings import Embedder, default_embedder

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics.bleu import BLEU

NAN = float("nan")

# The size of a working English word vocabulary, and the order of common LLM tokenizer vocabularies (GPT-2:
# 50,257). Liu et al. ask for one fixed V across everything compared; a fixed default gives that.
DEFAULT_VOCAB_SIZE = 50_000
# NoveltyBench's unigram baseline calls two generations equivalent above this ROUGE-1 F1 (novelty-bench
# src/partition.py uses >, we use >=; only a tie at exactly 0.458 differs).
DEFAULT_ROUGE1_THRESHOLD = 0.458
# Strict on purpose. With all-MiniLM-L6-v2, paraphrases of one answer score 0.93-0.99 ("Paris is the capital of
# France." / "The capital of France is Paris." 0.99), while answers that differ in the one word that matters
# score lower ("My favourite colour is blue." / "... green." 0.84) and unrelated texts below 0.1.
DEFAULT_COSINE_THRESHOLD = 0.9
DEFAULT_CONFIDENT = 0.99

Similarity = Callable[[str, str], bool]
Equivalence = Literal["rouge1", "embedding"]

_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


# --- lexical -------------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """The tokens every n-gram metric here counts: lowercased words (inner apostrophes kept) and punctuation.

    "Don't panic!" -> ["don't", "panic", "!"].
    """
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ModescopeError(f"n-gram order must be a positive integer, got {n!r}; use n = 1, 2, 3 or 4")


def ngram_counts(texts: Sequence[str], n: int) -> tuple[int, int]:
    """(distinct n-grams, total n-grams) over all texts, n-grams taken within each text."""
    _check_n(n)
    grams = [g for text in texts for g in _ngrams(tokenize(text), n)]
    return len(set(grams)), len(grams)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct n-grams / total n-grams over all texts, in [0, 1] (1: no n-gram repeats).

    Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models". NaN when the
    texts hold no n-gram (every text shorter than n tokens).
    """
    distinct, total = ngram_counts(texts, n)
    return distinct / total if total else NAN


def expected_distinct(total: int, vocab_size: int) -> float:
    """Expected number of distinct types among `total` draws, uniform and independent, from `vocab_size` types.

    V * (1 - ((V - 1) / V)^C), computed as -V * expm1(C * log1p(-1/V)) so that it stays exact for large V.
    """
    if total == 0:
        return 0.0
    if vocab_size == 1:
        return 1.0
    return -vocab_size * math.expm1(total * math.log1p(-1.0 / vocab_size))


def ead_n(texts: Sequence[str], n: int, vocab_size: int = DEFAULT_VOCAB_SIZE) -> float:
    """Expectation-Adjusted Distinct: EAD-n = N / (V * (1 - ((V - 1) / V)^C)).

    Liu et al. 2022, "Rethinking and Refining the Distinct Metric" (ACL): N = distinct n-grams, C = total
    n-grams, V = vocabulary size; the denominator is the number of distinct types expected if the C n-grams were
    drawn uniformly from V, which removes distinct-n's penalty on longer texts. About 1 for text as varied as
    uniform sampling, lower for repetitive text; it can slightly exceed 1.

    V: the paper uses the vocabulary size of the model's tokenizer and asks for one V shared by all systems
    compared. Tokens here are words, so the default V is DEFAULT_VOCAB_SIZE = 50,000 (a working English word
    vocabulary, and the order of GPT-2's 50,257 tokens). The formula has a single V, used for every n. Keep V
    fixed when comparing numbers. NaN when the texts hold no n-gram.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ModescopeError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    distinct, total = ngram_counts(texts, n)
    return distinct / expected_distinct(total, vocab_size) if total else NAN


@functools.cache
def _bleu() -> BLEU:
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(effective_order=True)


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU, on the 0..1 scale: the mean over i of BLEU(text i, references = all other texts).

    Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation Models". 1 when every text is
    repeated elsewhere in the group, near 0 for unrelated texts; higher = less diverse. BLEU is sacrebleu's
    sentence BLEU with its defaults (13a tokenization, mixed case, exponential smoothing, effective order),
    divided by 100. NaN for fewer than two texts.
    """
    if len(texts) < 2:
        return NAN
    bleu = _bleu()
    scores = [bleu.sentence_score(text, [*texts[:i], *texts[i + 1 :]]).score for i, text in enumerate(texts)]
    return float(np.mean(scores)) / 100.0


def compression_ratio(texts: Sequence[str]) -> float:
    """Size of the texts joined with newlines (UTF-8 bytes) / size of its gzip compression; higher = more repetitive.

    Shaib et al. 2024, "Standardizing the Measurement of Text Diversity: A Tool and a Comparative Analysis of
    Scores". gzip at level 9 with mtime 0, so the result is deterministic. gzip adds about 20 bytes of header and
    trailer, so very short inputs score below 1. NaN when the joined text is empty.
    """
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return NAN
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))


# --- pairwise similarity and equivalence classes --------------------------------------------------------------


@functools.cache
def _rouge_scorer() -> RougeScorer:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rouge1"])


def rouge1(a: str, b: str) -> float:
    """ROUGE-1 F1 of two texts (unigram overlap; symmetric), in [0, 1], as rouge-score computes it.

    Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries". rouge-score's tokenizer lowercases and
    keeps only ASCII letters and digits, without stemming: text in other scripts has no tokens and scores 0.
    """
    return float(_rouge_scorer().score(a, b)["rouge1"].fmeasure)


@dataclass(frozen=True)
class EquivalencePartition:
    """A partition of texts: labels[i] is the class of text i, classes numbered in order of first appearance."""

    labels: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of classes (NoveltyBench's distinct_k for k = len(labels))."""
        return max(self.labels, default=-1) + 1


def equivalence_classes(texts: Sequence[str], similar: Similarity) -> EquivalencePartition:
    """The NoveltyBench partition of texts into equivalence classes.

    Zhang et al. 2025, "NoveltyBench: Evaluating Language Models for Humanlike Diversity". In sample order, each
    text joins the first existing class whose representative (its first member) it is similar to, tested as
    similar(representative, text); otherwise it starts a new class. The number of classes, `.count`, is the
    number of meaningfully different texts (1 for a single text or all texts alike, len(texts) for all distinct).
    """
    representatives: list[str] = []
    labels: list[int] = []
    for text in texts:
        label = next((k for k, rep in enumerate(representatives) if similar(rep, text)), len(representatives))
        if label == len(representatives):
            representatives.append(text)
        labels.append(label)
    return EquivalencePartition(tuple(labels))


def rouge1_equivalence(threshold: float = DEFAULT_ROUGE1_THRESHOLD) -> Similarity:
    """Equivalence test: ROUGE-1 F1 >= threshold (default 0.458, NoveltyBench's unigram baseline).

    Identical strings are always equivalent, since rouge-score finds no tokens in non-ASCII text.
    """
    return lambda a, b: a == b or rouge1(a, b) >= threshold


def embedding_equivalence(embedder: Embedder | None = None, threshold: float = DEFAULT_COSINE_THRESHOLD) -> Similarity:
    """Equivalence test: cosine of the two texts' embeddings >= threshold (default 0.9).

    The embedder defaults to all-MiniLM-L6-v2 (loaded on the first comparison); each distinct text is embedded
    once.
    """
    return _cosine_equivalence({}, embedder, threshold)


def _cosine_equivalence(cache: dict[str, np.ndarray], embedder: Embedder | None, threshold: float) -> Similarity:
    def similar(a: str, b: str) -> bool:
        missing = [t for t in dict.fromkeys((a, b)) if t not in cache]
        if missing:
            cache.update(zip(missing, embed(missing, embedder), strict=True))
        return float(cache[a] @ cache[b]) >= threshold

    return similar


def embed(texts: Sequence[str], embedder: Embedder | None) -> np.ndarray:
    """Embeddings of texts as unit rows [n, d], float64; normalized again so a careless embedder still works."""
    vectors = np.asarray((embedder if embedder is not None else default_embedder())(texts), dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"an embedder must return an array [n, d] for n = {len(texts)} texts, got {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over the n(n-1)/2 pairs of unit rows of an [n, d] array; NaN for n < 2."""
    n = len(vectors)
    if n < 2:
        return NAN
    gram = vectors @ vectors.T  # [n, n]
    mean = (gram.sum() - np.trace(gram)) / (n * (n - 1))
    return float(np.clip(mean, -1.0, 1.0))  # rounding of float32 embeddings can step just past 1


def embedding_diversity(texts: Sequence[str], embedder: Embedder | None = None) -> float:
    """1 - mean pairwise cosine similarity of the texts' sentence embeddings, in [0, 2]; 0 for identical texts.

    As in Tevet & Berant 2021, "Evaluating the Evaluation of Diversity in Natural Language Generation" (their
    Sent-BERT similarity, turned into a diversity). The embedder defaults to all-MiniLM-L6-v2. NaN for fewer than
    two texts (the model is then not loaded).
    """
    if len(texts) < 2:
        return NAN
    return 1.0 - mean_pairwise_cosine(embed(texts, embedder))


# --- token level ---------------------------------------------------------------------------------------------


def mean_entropy_bits(entropies_bits: ArrayLike) -> float:
    """Mean of per-token next-token entropies, in bits; NaN for no tokens."""
    values = np.asarray(entropies_bits, dtype=np.float64)
    return float(values.mean()) if values.size else NAN


def branching_factor(entropies_bits: ArrayLike) -> float:
    """Branching factor: exp(mean per-token entropy in nats) = 2^(mean entropy in bits).

    After Yang & Holtzman 2025, "How Alignment Shrinks the Generative Horizon": the effective number of
    plausible next tokens per step (1 for a model that is always certain). Input in bits; NaN for no tokens.
    """
    return float(2.0 ** mean_entropy_bits(entropies_bits))


def share_confident(probabilities: ArrayLike, threshold: float = DEFAULT_CONFIDENT) -> float:
    """Share of tokens that were sampled with probability >= threshold (default 0.99), in [0, 1]; NaN for none.

    Input: the probability of each sampled token (not its log-probability).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if not np.all((p >= 0.0) & (p <= 1.0 + 1e-6)):  # the slack admits exp of a logprob rounded just above 0
        raise ModescopeError("probabilities must lie in [0, 1]; for log-probabilities pass np.exp(logp)")
    return float((p >= threshold).mean()) if p.size else NAN


# --- every text metric at once --------------------------------------------------------------------------------


def text_metrics(
    texts: Sequence[str],
    embedder: Embedder | None = None,
    equivalence: Equivalence = "rouge1",
    threshold: float | None = None,
) -> dict[str, float]:
    """Every text-only diversity metric of one group of texts, by stable name.

    Keys, in order: n_texts; distinct_1..distinct_4; ead_1..ead_4 (V = DEFAULT_VOCAB_SIZE); self_bleu (0..1);
    compression_ratio; embedding_diversity; equivalence_classes (the number of NoveltyBench classes, with the
    "rouge1" or "embedding" test at `threshold`, default DEFAULT_ROUGE1_THRESHOLD or DEFAULT_COSINE_THRESHOLD).
    embedder=None uses all-MiniLM-L6-v2, loaded only when the group has two texts or more. For a single text,
    self_bleu and embedding_diversity are NaN and equivalence_classes is 1.
    """
    if not texts:
        raise ModescopeError("no texts to measure; give at least one text")
    if equivalence not in ("rouge1", "embedding"):
        raise ModescopeError(f"unknown equivalence test {equivalence!r}; use 'rouge1' or 'embedding'")
    vectors = embed(texts, embedder) if len(texts) > 1 else np.zeros((len(texts), 0))  # [n, d], shared
    if equivalence == "rouge1":
        similar = rouge1_equivalence(DEFAULT_ROUGE1_THRESHOLD if threshold is None else threshold)
    else:
        cache = dict(zip(texts, vectors, strict=True)) if len(texts) > 1 else {}
        similar = _cosine_equivalence(cache, embedder, DEFAULT_COSINE_THRESHOLD if threshold is None else threshold)
    metrics: dict[str, float] = {"n_texts": float(len(texts))}
    metrics |= {f"distinct_{n}": distinct_n(texts, n) for n in range(1, 5)}
    metrics |= {f"ead_{n}": ead_n(texts, n) for n in range(1, 5)}
    metrics["self_bleu"] = self_bleu(texts)
    metrics["compression_ratio"] = compression_ratio(texts)
    metrics["embedding_diversity"] = 1.0 - mean_pairwise_cosine(vectors)  # NaN for one text
    metrics["equivalence_classes"] = float(equivalence_classes(texts, similar).count)
    return metrics


# --- JSONL input ---------------------------------------------------------------------------------------------


def read_groups_jsonl(path: str | Path) -> dict[str, list[str]]:
    """Texts by group from a JSONL file of {"group": str, "text": str} lines, groups in order of first appearance.

    Blank lines are skipped and other keys ignored; a UTF-8 byte-order mark is allowed. Anything else wrong
    raises ModescopeError naming the file, the line and what to change.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModescopeError(f'{path} {what}; pass a JSONL file of {{"group": ..., "text": ...}} lines')
    groups: dict[str, list[str]] = {}
    for number, raw in enumerate(path.read_bytes().removeprefix(codecs.BOM_UTF8).split(b"\n"), start=1):
        record = _parse_line(raw, f"{path}, line {number}")
        if record is not None:
            groups.setdefault(record[0], []).append(record[1])
    if not groups:
        raise ModescopeError(f'{path} is empty; it needs one {{"group": ..., "text": ...}} object per line')
    return groups


def _parse_line(raw: bytes, where: str) -> tuple[str, str] | None:
    """(group, text) of one JSONL line; None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModescopeError(
            f"{where}: not UTF-8 ({exc.reason} at byte {exc.start + 1}); save the file as UTF-8"
        ) from exc
    if not line.strip():
        return None
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ModescopeError(
            f'{where}: not valid JSON ({exc.msg} at column {exc.colno}); write one object like {{"group": "q1", "text": "..."}}'
        ) from exc
    if not isinstance(record, dict):
        raise ModescopeError(f'{where}: expected a JSON object with "group" and "text", got {type(record).__name__}')
    return _field(record, "group", where), _field(record, "text", where)


def _field(record: Mapping[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise ModescopeError(f'{where}: missing "{key}"; every line needs "group" and "text"')
    value = record[key]
    if not isinstance(value, str):
        raise ModescopeError(f'{where}: "{key}" must be a string, got {type(value).__name__} {value!r}; quote it')
    return value


def diversity_of_jsonl(
    path: str | Path,
    embedder: Embedder | None = None,
    equivalence: Equivalence = "rouge1",
    threshold: float | None = None,
) -> dict[str, dict[str, float]]:
    """text_metrics of each group of a JSONL file of {"group": str, "text": str} lines, in order of first appearance.

    A group with one text gets NaN for the metrics that need two (self_bleu, embedding_diversity).
    """
    groups = read_groups_jsonl(path)
    return {group: text_metrics(texts, embedder, equivalence, threshold) for group, texts in groups.items()}
