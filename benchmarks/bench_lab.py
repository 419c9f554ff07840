"""Benchmark the overoptimization lab: optimization steps per minute of the default configuration.

It runs `modescope.lab.train.run_lab` with the default `LabConfig` (smollm2-135m-instruct, VADER sentiment
reward, 8 completions of 24 tokens per step in groups of 4, LoRA rank 8 on q_proj and v_proj, KL coefficient
0.05) for --steps steps (default 10) into a temporary folder, and reports:

- steps per minute: optimization steps (sampling, reward, the policy and start-model passes, the update)
  over the time they took, checkpoint probes left out;
- seconds per checkpoint probe (step 0 and the last step are probed: sampling 24 held completions, their
  embeddings, the start model's passes and the exact 0..100 distribution);
- the estimated wall time of the default run (60 steps, probes at 0, 20, 40, 60): steps / (steps per
  minute) + 4 probes.

torch uses OMP_NUM_THREADS threads when it is set (the lab does the same), else torch's default; the thread
count is reported, and so is a warning when other work shared the machine. Run it with
`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_lab.py [--steps N] [--json PATH]`. Not part of CI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import add_measure_rows, benchmark_parser, prepare_run, progress_bar, task, warn_if_busy, write_figures

DEFAULT_STEPS = 60
DEFAULT_CHECKPOINTS = 4  # steps 0, 20, 40 and 60


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=1)
    parser.add_argument("--steps", type=int, default=10, help="optimization steps to time")
    args = parser.parse_args()
    console = Console(highlight=False)
    env = prepare_run(console.status, args.repeats)

    import modescope as ms
    from modescope.lab.rewards import make_reward
    from modescope.lab.train import LabConfig, run_lab, torch_threads_from_env
    from modescope.models.hf import HFBackend

    torch_threads_from_env()
    import torch

    env["torch_threads"] = torch.get_num_threads()
    config = LabConfig(steps=args.steps, checkpoint_every=args.steps)
    with console.status(f"loading {config.model}"):
        backend = ms.load(config.model, device="cpu")
    assert isinstance(backend, HFBackend)
    reward = make_reward(config.reward)
    steps = f"{args.steps} lab steps"
    with (
        tempfile.TemporaryDirectory() as folder,
        progress_bar(console) as bar,
        task(bar, steps, args.steps + 2) as advance,
    ):
        run = run_lab(
            config, Path(folder), backend, reward, on_step=lambda record: advance(), on_probe=lambda step: advance()
        )
    per_probe = run.probe_seconds / len(run.checkpoints)
    estimate = DEFAULT_STEPS / run.steps_per_minute * 60 + DEFAULT_CHECKPOINTS * per_probe
    figures = {
        "environment": env,
        "steps": args.steps,
        "steps_per_minute": run.steps_per_minute,
        "seconds_per_probe": per_probe,
        "default_run_estimate_s": estimate,
        "final_reward": run.checkpoints[-1]["metrics"]["reward"],
    }
    table = Table(title=f"modescope lab, default configuration ({env['torch_threads']} torch threads)")
    table.add_column("measure")
    table.add_column(config.model)
    add_measure_rows(
        table,
        {
            "optimization steps per minute": [f"{run.steps_per_minute:.2f}"],
            "seconds per checkpoint probe": [f"{per_probe:.1f}"],
            f"default run ({DEFAULT_STEPS} steps, {DEFAULT_CHECKPOINTS} probes), estimated": [
                f"{estimate / 60:.1f} min"
            ],
        },
    )
    console.print(table)
    warn_if_busy(console, env)
    write_figures(args.json, figures, console)


if __name__ == "__main__":
    main()
