"""Prompt strategies against mode collapse: the prompt rewritten so the model spreads its answers.

A strategy turns a prompt into the text the model sees. Every text works two ways: a base model continues it
as plain text, and a chat model gets it as the user message (through `Backend.prompt_ids` when the backend
is used `with_chat`). So the instructions go *before* the prompt, and the prompt stays last: a story opening
to continue ("The storm tore the roof off the farmhouse, and") still ends the text, so a base model continues
it, and a question ("Name a colour.") is still the last thing a chat model reads. The texts are short, for
small models with short contexts.

- `direct`: the prompt unchanged, the point every strategy is compared with;
- `vary`: one line asking for an original answer first (see `VARY_INSTRUCTION`);
- `few-shot`: three deliberately varied examples first, one of each kind of prompt modescope uses (a
  short-answer question, an instruction, a story opening), each answered the uncommon way (see `FEW_SHOT`);
- `verbalized`: Verbalized Sampling (Zhang et al. 2025): k responses, each with its probability, in one fixed
  format (see `modescope.remedies.verbalized.verbalized_prompt`).
"""

from __future__ import annotations

from modescope.errors import ModescopeError

STRATEGIES = ("direct", "vary", "few-shot", "verbalized")

VARY_INSTRUCTION = "Be original: avoid the most common answer and give an unexpected one."
"""The `vary` line, put before the prompt with a blank line between them."""

FEW_SHOT = (
    "Prompt: Name a fruit.\n"
    "Response: Durian.\n"
    "\n"
    "Prompt: Write a one-sentence story about a cat.\n"
    "Response: The cat inherited the lighthouse and refused to share it with the gulls.\n"
    "\n"
    "Prompt: The old clock struck midnight, and\n"
    "Response: the mice began their parliament under the floorboards.\n"
    "\n"
)
"""The `few-shot` examples: uncommon answers (not apple, not a cat on a mat, not a ghost at midnight) to a
question, an instruction and a story opening, so the model sees variety in every form it may be asked. The
prompt follows as `Prompt: {prompt}\\nResponse:`, so a base model answers it the way the examples are answered
and a chat model reads a short pattern to follow."""

FEW_SHOT_STOP = "\nPrompt:"
"""Where a base model that goes on writing examples after its response should be cut (`stop_strings`)."""


def check_strategy(name: str) -> str:
    """`name` when it is a strategy; else a ModescopeError listing them."""
    if name not in STRATEGIES:
        raise ModescopeError(f"unknown prompt strategy '{name}'; use one of {', '.join(STRATEGIES)}")
    return name


def render_strategy(strategy: str, prompt: str, k: int = 5) -> str:
    """The text the model sees for `prompt` under `strategy` (k: the responses `verbalized` asks for).

    - direct: `{prompt}`
    - vary: `{VARY_INSTRUCTION}\\n\\n{prompt}`
    - few-shot: `Here are some original, varied responses.\\n\\n{FEW_SHOT}Prompt: {prompt}\\nResponse:`
    - verbalized: `verbalized_prompt(prompt, k)` (the prompt first, then the request for k responses).
    """
    check_strategy(strategy)
    if strategy == "direct":
        return prompt
    if strategy == "vary":
        return f"{VARY_INSTRUCTION}\n\n{prompt}"
    if strategy == "few-shot":
        return f"Here are some original, varied responses.\n\n{FEW_SHOT}Prompt: {prompt}\nResponse:"
    from modescope.remedies.verbalized import verbalized_prompt

    return verbalized_prompt(prompt, k)


def stop_strings(strategy: str) -> tuple[str, ...]:
    """Stop strings that end a response of this strategy where a base model would go on past it: after a
    few-shot response it starts the next example (`FEW_SHOT_STOP`). The others need none."""
    check_strategy(strategy)
    return (FEW_SHOT_STOP,) if strategy == "few-shot" else ()
