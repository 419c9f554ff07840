"""Diversity metrics of src/modescope/metrics/diversity.py on hand-computed examples.

Self-BLEU, ROUGE-1 and the compression ratio are checked against sacrebleu, rouge-score and gzip called directly;
embedding metrics run on a fake embedder, except one test that loads the real all-MiniLM-L6-v2 offline.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from modescope.errors import ModescopeError
from modescope.metrics.diversity import (
    DEFAULT_VOCAB_SIZE,
    branching_factor,
    compression_ratio,
    distinct_n,
    diversity_of_jsonl,
    ead_n,
    embedding_diversity,
    embedding_equivalence,
    equivalence_classes,
    mean_entropy_bits,
    rouge1,
    rouge1_equivalence,
    self_bleu,
    share_confident,
    text_metrics,
    tokenize,
)
from modescope.metrics.embeddings import SentenceTransformerEmbedder, default_embedder

TWO = ["The cat sat.", "The cat ran."]
SAME = ["the quick brown fox jumps"] * 4
VARIED = [
    "A dragon guarded the mountain pass for a thousand years.",
    "The lighthouse keeper found a message in a bottle.",
    "Quarterly revenue rose by ten percent in March.",
]
METRIC_NAMES = [
    "n_texts",
    *(f"distinct_{n}" for n in range(1, 5)),
    *(f"ead_{n}" for n in range(1, 5)),
    "self_bleu",
    "compression_ratio",
    "embedding_diversity",
    "equivalence_classes",
]


def fake_embedder(texts: Sequence[str]) -> np.ndarray:
    """Letter counts a-z, L2-normalized: identical texts have cosine 1, texts without shared letters 0."""
    vectors = np.zeros((len(texts), 26))
    for row, text in enumerate(texts):
        for ch in text.lower():
            if "a" <= ch <= "z":
                vectors[row, ord(ch) - ord("a")] += 1
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


# --- lexical ------------------------------------------------------------------------------------------------


def test_tokenize_lowercases_words_and_punctuation() -> None:
    assert tokenize("Don't panic, Arthur!") == ["don't", "panic", ",", "arthur", "!"]


def test_distinct_n_by_hand() -> None:
    # tokens: [the cat sat .] [the cat ran .]
    assert distinct_n(TWO, 1) == pytest.approx(5 / 8)  # the cat sat . ran
    assert distinct_n(TWO, 2) == pytest.approx(5 / 6)  # (the cat) twice
    assert distinct_n(TWO, 3) == 1.0
    assert distinct_n(TWO, 4) == 1.0
    assert math.isnan(distinct_n(TWO, 5))  # no 5-gram at all


def test_ngrams_do_not_cross_texts() -> None:
    assert distinct_n(["a b", "b a"], 2) == 1.0  # 2 bigrams, not the 3 of "a b b a"


def test_distinct_n_rejects_bad_order() -> None:
    with pytest.raises(ModescopeError, match="positive integer"):
        distinct_n(TWO, 0)


def test_ead_by_hand() -> None:
    # N = 2 distinct of C = 3 tokens, V = 2: expected distinct 2 * (1 - (1/2)^3) = 7/4
    assert ead_n(["a b a"], 1, vocab_size=2) == pytest.approx(8 / 7)
    assert ead_n(["a a a"], 1, vocab_size=1) == 1.0
    v = DEFAULT_VOCAB_SIZE
    assert ead_n(TWO, 1) == pytest.approx(5 / (v * (1 - ((v - 1) / v) ** 8)), rel=1e-12)
    assert math.isnan(ead_n(["a"], 2))
    with pytest.raises(ModescopeError, match="vocab_size"):
        ead_n(TWO, 1, vocab_size=0)


def test_ead_removes_the_length_penalty_of_distinct() -> None:
    # All-distinct tokens: distinct-1 stays 1, EAD stays about 1 whatever the length (for V >> C)
    words = [f"w{i}" for i in range(200)]
    assert ead_n([" ".join(words)], 1, vocab_size=10**9) == pytest.approx(1.0, abs=1e-6)


def test_compression_ratio_matches_gzip() -> None:
    raw = "\n".join(VARIED).encode("utf-8")
    assert compression_ratio(VARIED) == len(raw) / len(gzip.compress(raw, mtime=0))
    assert compression_ratio(SAME) > compression_ratio(VARIED)
    assert math.isnan(compression_ratio([""]))


def test_self_bleu_matches_sacrebleu() -> None:
    expected = np.mean(
        [
            sacrebleu.sentence_bleu(t, [o for j, o in enumerate(VARIED + TWO) if j != i]).score
            for i, t in enumerate(VARIED + TWO)
        ]
    )
    assert self_bleu(VARIED + TWO) == pytest.approx(expected / 100, abs=1e-12)
    assert math.isnan(self_bleu(["only one"]))


def test_rouge1_matches_rouge_score() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    a, b = "The cat sat on the mat.", "A cat was sitting on a mat"
    assert rouge1(a, b) == scorer.score(a, b)["rouge1"].fmeasure
    assert rouge1(a, b) == rouge1(b, a)


def test_identical_texts_are_least_diverse() -> None:
    for n in range(1, 5):
        assert distinct_n(SAME, n) == pytest.approx(1 / len(SAME))
    assert self_bleu(SAME) == pytest.approx(1.0)
    assert equivalence_classes(SAME, rouge1_equivalence()).count == 1
    assert equivalence_classes(SAME, embedding_equivalence(fake_embedder)).count == 1
    assert embedding_diversity(SAME, fake_embedder) == pytest.approx(0.0, abs=1e-12)


# --- partition ----------------------------------------------------------------------------------------------


def test_partition_joins_first_class_whose_representative_is_similar() -> None:
    calls: list[tuple[str, str]] = []

    def similar(rep: str, text: str) -> bool:  # not transitive: lengths within 1
        calls.append((rep, text))
        return abs(len(rep) - len(text)) <= 1

    partition = equivalence_classes(["a", "bb", "ccc", "dd", "eeee"], similar)
    # "ccc" is 2 away from "a": new class; "dd" joins "a"'s class, the first; "eeee" matches "ccc" only
    assert partition.labels == (0, 0, 1, 0, 1)
    assert partition.count == 2
    assert calls == [("a", "bb"), ("a", "ccc"), ("a", "dd"), ("a", "eeee"), ("ccc", "eeee")]


def test_partition_edges() -> None:
    assert equivalence_classes([], rouge1_equivalence()).count == 0
    assert equivalence_classes(["x"], rouge1_equivalence()).labels == (0,)
    assert equivalence_classes(VARIED, rouge1_equivalence()).count == 3


def test_rouge1_equivalence_threshold() -> None:
    a, b = "the cat sat on the mat", "the cat sat on a rug"  # F1 = 2 * (4/6 * 4/6) / (8/6) = 2/3
    assert rouge1(a, b) == pytest.approx(2 / 3)
    assert rouge1_equivalence(0.6)(a, b)
    assert not rouge1_equivalence(0.7)(a, b)
    assert rouge1_equivalence()("你好", "你好")  # no ASCII tokens, still the same text


def test_embedding_equivalence_and_diversity_on_fake_embedder() -> None:
    assert embedding_equivalence(fake_embedder, 0.99)("abc", "cab")
    assert not embedding_equivalence(fake_embedder, 0.5)("abc", "xyz")
    assert embedding_diversity(["aaa", "bbb", "ccc"], fake_embedder) == pytest.approx(1.0)
    assert embedding_diversity(["ab", "ab", "cd"], fake_embedder) == pytest.approx(1 - 1 / 3)
    assert math.isnan(embedding_diversity(["one"], fake_embedder))


# --- token level --------------------------------------------------------------------------------------------


def test_branching_factor_and_mean_entropy() -> None:
    assert mean_entropy_bits([0.0, 2.0]) == 1.0
    assert branching_factor([0.0, 2.0]) == pytest.approx(2.0)
    assert branching_factor([0.0, 0.0]) == 1.0
    bits = [0.3, 1.7, 4.0]
    assert branching_factor(bits) == pytest.approx(math.exp(np.mean(bits) * math.log(2)))
    assert math.isnan(branching_factor([]))


def test_share_confident() -> None:
    assert share_confident([0.995, 0.99, 0.5, 0.98]) == 0.5
    assert share_confident([0.995, 0.99, 0.5, 0.98], threshold=0.5) == 1.0
    assert math.isnan(share_confident([]))
    with pytest.raises(ModescopeError, match="log-probabilities"):
        share_confident([-0.1, -2.0])


# --- all metrics, JSONL ----------------------------------------------------------------------------------------


def test_text_metrics_names_and_values() -> None:
    metrics = text_metrics(TWO, embedder=fake_embedder)
    assert list(metrics) == METRIC_NAMES
    assert metrics["n_texts"] == 2.0
    assert metrics["distinct_1"] == distinct_n(TWO, 1)
    assert metrics["self_bleu"] == self_bleu(TWO)
    assert metrics["embedding_diversity"] == pytest.approx(embedding_diversity(TWO, fake_embedder))
    assert metrics["equivalence_classes"] == 1.0  # ROUGE-1 F1 2/3
    by_cosine = text_metrics(TWO, embedder=fake_embedder, equivalence="embedding", threshold=0.99)
    assert by_cosine["equivalence_classes"] == 2.0


def test_text_metrics_rejects_bad_input() -> None:
    with pytest.raises(ModescopeError, match="'rouge1' or 'embedding'"):
        text_metrics(TWO, embedder=fake_embedder, equivalence="bleu")  # type: ignore[arg-type]
    with pytest.raises(ModescopeError, match="no texts"):
        text_metrics([], embedder=fake_embedder)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_diversity_of_jsonl(tmp_path: Path) -> None:
    records = [
        {"group": "q2", "text": TWO[0]},
        {"group": "q1", "text": "alone"},
        {"group": "q2", "text": TWO[1], "seed": 3},
    ]
    result = diversity_of_jsonl(write_jsonl(tmp_path / "s.jsonl", records), embedder=fake_embedder)
    assert list(result) == ["q2", "q1"]
    assert result["q2"] == text_metrics(TWO, embedder=fake_embedder)
    single = result["q1"]
    assert math.isnan(single["self_bleu"]) and math.isnan(single["embedding_diversity"])
    assert single["equivalence_classes"] == 1.0 and single["distinct_1"] == 1.0


GOOD = json.dumps({"group": "g", "text": "t"}).encode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n  \n", "is empty"),
        (GOOD + b'\n{"group": "g", "text": "caf\xe9"}\n', "line 2: not UTF-8"),
        (GOOD + b"\n{group: g}\n", "line 2: not valid JSON"),
        (b'["g", "t"]\n', "line 1: expected a JSON object"),
        (b'{"text": "t"}\n', 'line 1: missing "group"'),
        (GOOD + b'\n\n{"group": "g"}\n', 'line 3: missing "text"'),
        (b'{"group": 7, "text": "t"}\n', '"group" must be a string, got int 7'),
        (b'{"group": "g", "text": null}\n', '"text" must be a string, got NoneType'),
    ],
)
def test_diversity_of_jsonl_bad_input(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ModescopeError, match=message.replace("(", r"\(")) as info:
        diversity_of_jsonl(path, embedder=fake_embedder)
    assert str(path) in str(info.value)


def test_diversity_of_jsonl_missing_file_or_directory(tmp_path: Path) -> None:
    with pytest.raises(ModescopeError, match="does not exist"):
        diversity_of_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ModescopeError, match="is a directory"):
        diversity_of_jsonl(tmp_path)


def test_importing_the_metrics_imports_no_model_library() -> None:
    code = (
        "import sys, modescope.metrics.diversity\n"
        "heavy = {'torch', 'sentence_transformers', 'rouge_score', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the real embedder --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return default_embedder()


def test_minilm_loads_offline_and_separates_texts(minilm: SentenceTransformerEmbedder) -> None:
    embedder = default_embedder()
    assert embedder is minilm  # cached in the process
    texts = ["The cat sat on the mat.", "The cat sat on the mat.", "Quarterly revenue rose by ten percent."]
    vectors = embedder(texts)
    assert vectors.shape == (3, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(vectors[0] @ vectors[2]) < 0.5
    assert embedding_diversity(texts[:2]) == pytest.approx(0.0, abs=1e-5)
    assert embedding_equivalence()(texts[0], texts[1])
