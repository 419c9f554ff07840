"""Optimize a model against a reward with LoRA adapters, checkpoint by checkpoint, and measure its collapse.

The algorithm is RLOO, REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024,
"Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs"), written
out here in a few dozen lines rather than taken from TRL: TRL's trainers bring datasets, accelerate and a
generation stack of their own, and are built for GPUs; on a 2-core CPU with a 135M model the cost is in
sampling and one forward/backward pass per step, which modescope's own batched decoder and peft already do,
and a loop that can be read top to bottom makes plain what the lab's curves are curves of.

One step:
1. take `batch_size / group_size` training prompts and sample `group_size` completions of each from the
   policy at temperature 1 (its own distribution, so the gradient estimate is on-policy);
2. score each completion with the reward r (`modescope.lab.rewards`: text terms of (prompt, completion), and
   the typicality term, the completion's mean token log-probability under the reference model, which is the
   start model computed in step 3 unless another reference is given);
3. shape it with the KL penalty to the start model (Ziegler et al. 2019): r - kl_coef * sum_t (log pi(y_t) -
   log pi0(y_t)), where pi0 is the start model, i.e. the same network with the adapter disabled (peft's
   `disable_adapter`), so the reference costs no second copy of the weights; kl_coef 0 is pure reward
   maximization, the overoptimization regime;
4. advantage = shaped reward minus the mean shaped reward of the other completions of the same prompt;
5. loss = -mean(advantage * sum_t log pi(y_t)); one AdamW step on the LoRA weights, gradient norm clipped to 1.

A step whose reward raises or returns something that is not a finite number is skipped (no update) and
recorded; the run goes on. Every `checkpoint_every` steps (and at the last step) the adapter is saved and the
probe set is measured (`modescope.lab.probe`); step 0 is probed too (the start model).

Output folder: `curves.jsonl` (one JSON object a line: {"kind": "step"|"skipped"|"checkpoint", ...}),
`run.json` (configuration, base model, timings), `checkpoints/step-NNNNN/` (peft adapter folders that load as
`BASE+FOLDER`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from modescope.errors import ModescopeError
from modescope.lab.prompts import HELD_PROMPTS, NUMBER_PROMPT, STORY_OPENINGS
from modescope.lab.rewards import Reward, RewardError, RewardSpec, as_spec, typicality
from modescope.metrics.embeddings import Embedder
from modescope.models.hf import HFBackend

CURVES = "curves.jsonl"
RUN = "run.json"
CHECKPOINTS = "checkpoints"


class LabConfig(BaseModel):
    """Everything that determines a lab run (with the model and the prompts)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m-instruct"
    reward: str = "sentiment"  # a reward spec (modescope.lab.rewards), e.g. typical+0.5*sentiment
    typical_reference: str | None = None  # the typicality term's reference model; None: the start model
    kl_coef: float = 0.05
    learning_rate: float = 3e-3
    steps: int = 60
    batch_size: int = 8  # completions per step
    group_size: int = 4  # completions per prompt; the RLOO baseline of each is the mean of the others
    max_tokens: int = 24
    seed: int = 0
    checkpoint_every: int = 20
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = ["q_proj", "v_proj"]
    probe_samples: int = 4  # completions per held prompt at each checkpoint
    number_probe: bool = True  # the exact 0..100 distribution at each checkpoint

    def check(self) -> None:
        """Raise ModescopeError naming the first option out of range."""
        problems = [
            (self.steps < 1, f"steps must be at least 1 (got {self.steps})"),
            (
                self.group_size < 2,
                f"group size must be at least 2 for the leave-one-out baseline (got {self.group_size})",
            ),
            (
                self.batch_size < self.group_size or self.batch_size % self.group_size,
                f"batch size ({self.batch_size}) must be a multiple of the group size ({self.group_size})",
            ),
            (self.max_tokens < 1, f"max tokens must be at least 1 (got {self.max_tokens})"),
            (not (self.learning_rate > 0 and math.isfinite(self.learning_rate)), "learning rate must be positive"),
            (not (self.kl_coef >= 0 and math.isfinite(self.kl_coef)), "the KL coefficient must be 0 or more"),
            (self.checkpoint_every < 1, f"checkpoint every must be at least 1 (got {self.checkpoint_every})"),
            (self.lora_rank < 1, f"LoRA rank must be at least 1 (got {self.lora_rank})"),
            (self.probe_samples < 1, f"probe samples must be at least 1 (got {self.probe_samples})"),
        ]
        for failed, message in problems:
            if failed:
                raise ModescopeError(message)


@dataclass
class LabRun:
    """What a run produced."""

    out: Path
    steps_done: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"step", "reason"}
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # the checkpoint records of curves.jsonl
    train_seconds: float = 0.0  # optimization steps only (sampling, reward, update), probes left out
    probe_seconds: float = 0.0

    @property
    def steps_per_minute(self) -> float:
        return 60.0 * (self.steps_done + len(self.skipped)) / self.train_seconds if self.train_seconds else float("nan")


def prepare_folder(out: Path, overwrite: bool = False) -> None:
    """Create the run folder and prove it can be written, before any model time is spent."""
    if (out / CURVES).exists() and not overwrite:
        raise ModescopeError(f"'{out}' already holds a lab run; give a new folder or --overwrite")
    try:
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ModescopeError(
            f"cannot write to the lab folder '{out}': {exc.strerror or exc}; give a writable folder"
        ) from exc
    if overwrite:
        (out / CURVES).unlink(missing_ok=True)
        for old in (out / CHECKPOINTS).glob("step-*"):
            shutil.rmtree(old)


def _json_line(record: dict[str, Any]) -> str:
    """One curve record; numbers that are not finite become null (JSON has no NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(record), ensure_ascii=False)


class CurveWriter:
    """Appends records to curves.jsonl as they come, so a run stopped midway keeps its curves."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(_json_line(record) + "\n")
        except OSError as exc:
            raise ModescopeError(f"cannot write the curve file '{self.path}': {exc.strerror or exc}") from exc


def save_checkpoint(peft_model: Any, backend: HFBackend, base_name: str, folder: Path, meta: dict[str, Any]) -> None:
    """Save the adapter with the base model's name and fingerprint, so `BASE+FOLDER` can check its base."""
    from modescope.models.adapters import ADAPTER_META, base_fingerprint

    # peft records the folder the base was loaded from (a path on this machine); the modescope name is what
    # `BASE+FOLDER` needs
    for lora in peft_model.peft_config.values():
        lora.base_model_name_or_path = base_name
    try:
        # the LoRA weights only: "auto" would look for the base config on disk or the Hub to check the vocabulary
        peft_model.save_pretrained(str(folder), save_embedding_layers=False)
        data = {"base": base_name, "fingerprint": base_fingerprint(backend)} | meta
        (folder / ADAPTER_META).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ModescopeError(f"cannot write the checkpoint '{folder}': {exc.strerror or exc}") from exc


def _sequence_logprob_sums(
    backend: HFBackend, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
) -> tuple[Any, Any]:
    """(per-token log pi with gradients, mask), both [rows, longest completion]."""
    from modescope.lab.sequences import completion_logprobs

    return completion_logprobs(
        backend.model, backend.tokenizer.pad_token_id or 0, backend.vocab.size, prompts, completions
    )


def check_same_tokenizer(backend: HFBackend, reference: HFBackend) -> None:
    """Refuse a typicality reference whose tokenizer differs from the policy's: it scores the policy's token ids."""
    ours, theirs = backend.tokenizer.get_vocab(), reference.tokenizer.get_vocab()
    if ours != theirs or backend.vocab.size != reference.vocab.size:
        detail = (
            f"{len(theirs)} tokens vs {len(ours)}" if len(ours) != len(theirs) else "the same size, other token ids"
        )
        raise ModescopeError(
            f"the typicality reference '{reference.name}' has another tokenizer than '{backend.name}' ({detail}); "
            "give a model with the same tokenizer, or leave the reference out to use the start model"
        )


def _reference_logprobs(
    reference: HFBackend, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], device: Any
) -> Any:
    """log p(token) of the completions under a separate reference model, without gradients, on `device`."""
    import torch

    with torch.no_grad():
        logprobs, _ = _sequence_logprob_sums(reference, prompts, completions)
    return logprobs.to(device)


def run_lab(
    config: LabConfig,
    out: Path,
    backend: HFBackend,
    reward: RewardSpec | Reward,
    prompts: Sequence[str] = STORY_OPENINGS,
    held_prompts: Sequence[str] = HELD_PROMPTS,
    number_prompt: str = NUMBER_PROMPT,
    embedder: Embedder | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_probe: Callable[[int], None] | None = None,
    command: str | None = None,
    overwrite: bool = False,
    reference: HFBackend | None = None,
) -> LabRun:
    """Optimize `backend` (its model gets LoRA adapters, in place) against `reward`; see the module docstring.

    `reward` is a RewardSpec (`parse_reward`) or a (prompt, completion) callable; `reference` is the model the
    typicality term is measured under (the model `config.typical_reference` names, with the same tokenizer),
    None for the start model.

    `on_step(record)` is called after each step with its curve record, `on_probe(step)` before each
    checkpoint's probes; `embedder` defaults to all-MiniLM-L6-v2; `command` is recorded in run.json and in
    each checkpoint's metadata, to say how to make it again.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from modescope.engine.decode import generate_many
    from modescope.lab.probe import ProbeSet, probe

    config.check()
    spec = as_spec(reward)
    if (reference is None) != (config.typical_reference is None):
        raise ModescopeError("give the typicality reference model both in the config and as a backend, or neither")
    if reference is not None:
        if not spec.has_typical:
            raise ModescopeError(f"a typicality reference needs the typical term in the reward (got '{spec.spec}')")
        check_same_tokenizer(backend, reference)
    if not prompts:
        raise ModescopeError("no training prompts; give at least one prompt")
    prepare_folder(out, overwrite)
    base_name = backend.name
    curves = CurveWriter(out / CURVES)
    run = LabRun(out)

    torch.manual_seed(config.seed)  # the LoRA A matrices are drawn at random
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=list(config.lora_targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for a user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(backend.model, lora)
    except ValueError as exc:
        raise ModescopeError(f"cannot put LoRA adapters on '{base_name}': {exc}; change the LoRA targets") from exc
    backend.name = f"{base_name}+lab"
    # peft injected the adapter layers into backend.model itself, so `backend` now samples from the policy, and
    # computes the start model inside `peft_model.disable_adapter()`.
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=0.0
    )
    probes = ProbeSet(
        list(held_prompts),
        config.probe_samples,
        config.max_tokens,
        config.seed,
        number_prompt if config.number_probe else None,
    )
    run_info: dict[str, Any] = {
        "config": config.model_dump(),
        "base": base_name,
        "command": command,
        "reward_terms": [{"name": t.name, "weight": t.weight} for t in spec.terms],
        "torch_threads": torch.get_num_threads(),
        "prompts": list(prompts),
        "held_prompts": list(held_prompts),
    }
    start_ppl_at_zero: float | None = None

    def checkpoint(step: int) -> None:
        nonlocal start_ppl_at_zero
        if on_probe:
            on_probe(step)
        began = time.perf_counter()
        adapter = None
        if step > 0:
            folder = out / CHECKPOINTS / f"step-{step:05d}"
            save_checkpoint(
                peft_model,
                backend,
                base_name,
                folder,
                {"step": step, "command": command, "config": config.model_dump()},
            )
            adapter = str(folder.relative_to(out))
        metrics, samples = probe(
            backend, peft_model.disable_adapter, spec, probes, embedder, start_ppl_at_zero, reference
        )
        if step == 0:
            start_ppl_at_zero = metrics["start_ppl"]
        record = {"kind": "checkpoint", "step": step, "adapter": adapter, "metrics": metrics, "samples": samples}
        curves.write(record)
        run.checkpoints.append(record)
        run.probe_seconds += time.perf_counter() - began

    order = random.Random(config.seed)
    per_step = config.batch_size // config.group_size
    queue: list[str] = []
    checkpoint(0)
    for step in range(1, config.steps + 1):
        began = time.perf_counter()
        chosen = []
        for _ in range(per_step):  # every prompt once, in a shuffled order, before any repeats
            if not queue:
                queue = list(prompts)
                order.shuffle(queue)
            chosen.append(queue.pop())
        texts_prompts = [p for p in chosen for _ in range(config.group_size)]
        prompt_ids = [backend.prompt_ids(p) for p in texts_prompts]
        runs = generate_many(
            backend,
            prompt_ids,
            max_tokens=config.max_tokens,
            temperature=1.0,
            top_k_alternatives=0,
            seed=config.seed * 1_000_003 + step,
        )
        texts = [r.text for r in runs]
        completions = [[t.id for t in r.tokens] for r in runs]
        entropy = [t.entropy_bits for r in runs for t in r.tokens]
        try:
            text_scores = spec.text_scores(texts_prompts, texts)
        except RewardError as exc:
            skipped = {"kind": "skipped", "step": step, "reason": str(exc)}
            run.skipped.append(skipped)
            curves.write(skipped)
            run.train_seconds += time.perf_counter() - began
            if on_step:
                on_step(skipped)
        else:
            record = _update(
                peft_model, optimizer, backend, config, prompt_ids, completions, spec, text_scores, reference
            )
            record |= {"kind": "step", "step": step, "entropy_bits": sum(entropy) / max(len(entropy), 1)}
            run.steps_done += 1
            run.train_seconds += time.perf_counter() - began
            record["seconds"] = time.perf_counter() - began
            curves.write(record)
            if on_step:
                on_step(record)
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint(step)
    run_info |= {
        "steps_done": run.steps_done,
        "skipped_steps": [s["step"] for s in run.skipped],
        "train_seconds": run.train_seconds,
        "probe_seconds": run.probe_seconds,
        "steps_per_minute": run.steps_per_minute,
    }
    (out / RUN).write_text(_json_line(run_info) + "\n", encoding="utf-8")
    return run


def _update(
    peft_model: Any,
    optimizer: Any,
    backend: HFBackend,
    config: LabConfig,
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    spec: RewardSpec,
    text_scores: dict[str, list[float]],
    reference: HFBackend | None,
) -> dict[str, Any]:
    """One RLOO update; returns the step's curve figures."""
    import torch

    logprobs, mask = _sequence_logprob_sums(backend, prompt_ids, completions)  # [rows, tokens], with gradients
    with torch.no_grad(), peft_model.disable_adapter():
        start, _ = _sequence_logprob_sums(backend, prompt_ids, completions)
    typical = None
    if spec.has_typical:  # the start model's log-probs are at hand; another reference costs one more pass
        scored = start if reference is None else _reference_logprobs(reference, prompt_ids, completions, start.device)
        typical = typicality(scored, mask)
    rewards = spec.combine(text_scores, typical)
    terms = text_scores | ({"typical": typical} if typical is not None else {})
    kl = ((logprobs.detach() - start) * mask).sum(-1)  # [rows] nats, sampled estimate of KL(pi || pi0)
    reward = torch.tensor(rewards, dtype=logprobs.dtype, device=logprobs.device)
    shaped = (reward - config.kl_coef * kl).view(-1, config.group_size)  # [prompts, group]
    others = (shaped.sum(-1, keepdim=True) - shaped) / (config.group_size - 1)  # leave-one-out baseline
    advantage = (shaped - others).view(-1)
    loss = -(advantage * (logprobs * mask).sum(-1)).mean()
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return {
        "reward": float(reward.mean()),
        "reward_min": float(reward.min()),
        "reward_max": float(reward.max()),
        "reward_terms": {name: sum(values) / len(values) for name, values in terms.items()},
        "kl_nats": float(kl.mean()),
        "loss": float(loss.detach()),
        "grad_norm": float(grad_norm),
        "tokens_per_completion": float(mask.sum()) / len(rewards),
    }


def torch_threads_from_env() -> None:
    """Use as many torch threads as OMP_NUM_THREADS says, when it says (polite on a shared machine)."""
    import torch

    value = os.environ.get("OMP_NUM_THREADS")
    if value and value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))
