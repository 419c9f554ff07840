"""The classic figure: each model's probability of every candidate, on one shared axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modescope.probes.distribution import DistributionResult

MAX_TICK_LABELS = 40
NICE_STEPS = [k * 10**e for e in range(7) for k in (1, 2, 5)]  # tick every 1, 2, 5, 10, 20, 50, ... candidates


def plot_distribution(result: DistributionResult, path: Path) -> Path:
    """Write grouped bars (one colour per model) of probability within the candidate set; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(result.candidates)
    models = len(result.results)
    width = 0.85 / models
    x = np.arange(count)
    fig, ax = plt.subplots(figsize=(min(24.0, max(8.0, 0.14 * count + 4.0)), 4.8), layout="constrained")
    for k, r in enumerate(result.results):
        probs = [o.prob for o in r.outcomes]
        label = f"{r.model}  (coverage {r.coverage:.1%}, entropy {r.entropy_bits:.2f} bits, top {r.top1!r})"
        ax.bar(x + (k - (models - 1) / 2) * width, probs, width, label=label, color=f"C{k}", alpha=0.9)
    step = next(s for s in NICE_STEPS if s * MAX_TICK_LABELS >= count) if count > MAX_TICK_LABELS else 1
    ax.set_xticks(x[::step], [result.candidates[i] for i in range(0, count, step)], rotation=90 if step == 1 else 0)
    ax.set_xlim(-0.6, count - 0.4)
    ax.set_xlabel("candidate")
    ax.set_ylabel("probability within the candidate set")
    prompt = result.prompt if len(result.prompt) <= 90 else "…" + result.prompt[-89:]
    ax.set_title(repr(prompt).replace("$", r"\$"), fontsize=9, loc="left")  # no mathtext
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
