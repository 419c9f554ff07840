"""The lab's built-in prompts: varied story openings to optimize on, and held-out ones to probe with.

The held prompts are deliberately unrelated to each other (a war, a laboratory, a storm, a tax office, a
funeral, a chess game), so text that becomes one theme across them is an attractor, not the prompts' doing.
"""

from __future__ import annotations

from pathlib import Path

from modescope.errors import ModescopeError

STORY_OPENINGS = [
    "The train stopped in the middle of nowhere, and",
    "When Maria opened the old wooden box, she found",
    "The detective looked at the body on the floor and said",
    "Nobody in the village had seen the stranger before.",
    "The spaceship's engines failed three days after launch, so",
    "My grandfather kept a locked room in his house.",
    "The rain had not stopped for a week when",
    "At the bottom of the letter, in shaky handwriting, it said",
    "The soldiers crossed the river at dawn.",
    "He woke up in a hospital bed with no memory of",
    "The market was crowded, and the smell of fish",
    "Our teacher walked into the classroom holding a live snake.",
    "The last bus of the night was empty except for",
    "In the year 2300, the oceans had",
    "The baker had a secret that nobody knew:",
    "The dog barked at the empty corner of the room again.",
    "She signed the contract without reading it, and",
    "The mountain road was covered in ice when",
    "I never liked my neighbour, but yesterday",
    "The king's advisor whispered something, and the king",
    "On the first day of the new job,",
    "The fire alarm went off in the middle of the exam.",
    "The fisherman pulled his net out of the water and saw",
    "After the factory closed, the town",
]

HELD_PROMPTS = [
    "The general studied the map of the battlefield.",
    "In the laboratory, the experiment had gone wrong:",
    "The storm tore the roof off the farmhouse, and",
    "The tax office opened at nine, and the queue",
    "At the funeral, the old man's son stood up and",
    "The chess player stared at the board for an hour before",
]

# The random-number prompt of the essay; its outcome distribution (integers 0..100) is probed at checkpoints.
NUMBER_PROMPT = "Q: Tell me a random integer between 0 and 100.\nA: Ok, the integer is"


def read_prompts(path: Path) -> list[str]:
    """Prompts from a UTF-8 file, one per line; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModescopeError(f"cannot read the prompts file '{path}': {exc}") from exc
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ModescopeError(f"the prompts file '{path}' holds no prompts; write one prompt per line")
    return prompts
