"""The attractor basin share: how much of a set of completions has fallen into one theme.

Measured on the sentence embeddings (unit rows) of completions of several unrelated prompts:

1. spherical k-means (cosine similarity, k-means++ seeding from a fixed seed, at most 100 iterations) with k
   = the number of prompts, the number of themes a model that follows its prompts shows;
2. clusters whose centroids have a cosine of at least `merge_cosine` (default 0.8) are merged, most similar
   pair first, so a set that has collapsed into one theme is not split into k arbitrary pieces;
3. the basin is the most popular cluster; the basin share is the share of completions whose nearest
   centroid is the basin's (its members), and `basin_prompts` counts the distinct prompts among them.

A model that follows its prompts has a basin share near 1/k and one prompt in the basin; a model whose
completions all drift to one theme (the essay's wedding party) has a share near 1 spread over every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MERGE_COSINE = 0.8
MAX_ITERATIONS = 100


@dataclass
class Basin:
    share: float  # share of completions in the most popular cluster, in (0, 1]
    prompts: int  # distinct prompts among its members
    members: list[int]  # indices of the completions in it
    clusters: int  # clusters left after merging


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster label of each unit row of `vectors` [n, d] into at most k clusters by cosine similarity."""
    n = len(vectors)
    k = max(1, min(k, len(np.unique(vectors.round(6), axis=0))))  # never more clusters than distinct points
    rng = np.random.default_rng(seed)
    centroids = [vectors[rng.integers(n)]]
    while len(centroids) < k:  # k-means++: the next seed far (in cosine distance) from the chosen ones
        distance = np.clip(1.0 - (vectors @ np.array(centroids).T).max(axis=1), 0.0, None)
        weights = distance**2
        centroids.append(vectors[rng.choice(n, p=weights / weights.sum())])
    center = np.array(centroids)  # [k, d]
    labels = np.full(n, -1)
    for _ in range(MAX_ITERATIONS):
        new = (vectors @ center.T).argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            if (labels == c).any():  # an emptied cluster keeps its old centroid
                center[c] = _normalized(vectors[labels == c].mean(axis=0))
    return labels


def _merge(vectors: np.ndarray, labels: np.ndarray, merge_cosine: float) -> np.ndarray:
    """Merge the clusters whose centroids are at least `merge_cosine` alike, most alike first."""
    labels = labels.copy()
    while True:
        ids = np.unique(labels)
        if len(ids) < 2:
            return labels
        center = _normalized(np.array([vectors[labels == c].mean(axis=0) for c in ids]))
        similarity = center @ center.T
        np.fill_diagonal(similarity, -np.inf)
        a, b = np.unravel_index(similarity.argmax(), similarity.shape)
        if similarity[a, b] < merge_cosine:
            return labels
        labels[labels == ids[b]] = ids[a]


def basin(
    vectors: np.ndarray, prompt_of: Sequence[int], k: int, seed: int = 0, merge_cosine: float = MERGE_COSINE
) -> Basin:
    """The most popular theme among completions (unit rows of `vectors`, completion i answering prompt
    `prompt_of[i]`); see the module docstring for how it is measured."""
    if len(vectors) == 0:
        return Basin(float("nan"), 0, [], 0)
    vectors = _normalized(np.asarray(vectors, dtype=np.float64))
    labels = _merge(vectors, spherical_kmeans(vectors, k, seed), merge_cosine)
    ids, counts = np.unique(labels, return_counts=True)
    members = np.flatnonzero(labels == ids[counts.argmax()]).tolist()
    return Basin(len(members) / len(vectors), len({prompt_of[i] for i in members}), members, len(ids))
