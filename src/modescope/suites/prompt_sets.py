"""Prompt sets: many prompts for one probe, from a JSON-lines or text file, a built-in set, or a list.

A `.jsonl` file holds one object per line, `{"id": ..., "prompt": ...}`; every other key is kept as the
prompt's metadata (a category, say) and travels with its results. A `.txt` file holds one prompt per line,
numbered from 1 as ids. A built-in set is named without a path (`open-ended`). Every problem is reported
with the file and line, so a 26,000-line file with one bad line says which line to fix.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modescope.errors import ModescopeError

BUILTIN = Path(__file__).parent.parent / "prompts"
SUFFIXES = (".jsonl", ".txt")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a set: its id (unique in the set), its text, and the other keys of its line."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def builtin_prompt_sets() -> dict[str, Path]:
    """The prompt sets shipped with modescope, by name."""
    return {p.stem: p for p in sorted(BUILTIN.glob("*.jsonl"))}


def locate(name_or_path: str | Path, folder: Path | None = None) -> Path:
    """A prompts file: a path (relative to `folder` when given and relative), else a built-in set's name."""
    path = Path(name_or_path).expanduser()
    if folder is not None and not path.is_absolute():
        path = folder / path
    if path.is_file():
        return path
    builtin = builtin_prompt_sets()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    known = ", ".join(builtin) or "none"
    raise ModescopeError(f"no prompts file '{name_or_path}' (looked for {path}); built-in prompt sets: {known}")


def load_prompts_file(name_or_path: str | Path, folder: Path | None = None) -> list[PromptItem]:
    """The prompts of a `.jsonl` or `.txt` file (or a built-in set), checked line by line."""
    path = locate(name_or_path, folder)
    if path.suffix.lower() not in SUFFIXES:
        raise ModescopeError(
            f"{path}: a prompts file is .jsonl (one JSON object per line) or .txt (one prompt per line)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModescopeError(f"cannot read the prompts file {path}: {exc}") from None
    items = _jsonl(text, path) if path.suffix.lower() == ".jsonl" else _lines(text, path)
    if not items:
        raise ModescopeError(f"{path}: the prompts file holds no prompts; give one prompt per line")
    return items


def _lines(text: str, path: Path) -> list[PromptItem]:
    return [PromptItem(str(k), line) for k, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _jsonl(text: str, path: Path) -> list[PromptItem]:
    items: list[PromptItem] = []
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ModescopeError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        item = _item(row, where, default_id=str(number))
        if item.id in lines:
            raise ModescopeError(
                f"{where}: id {item.id!r} is already used on line {lines[item.id]}; ids must be unique"
            )
        lines[item.id] = number
        items.append(item)
    return items


def _item(row: Any, where: str, default_id: str) -> PromptItem:
    if not isinstance(row, dict):
        raise ModescopeError(f'{where}: each line is a JSON object such as {{"id": "a", "prompt": "..."}}')
    if "prompt" not in row:
        raise ModescopeError(f'{where}: the line has no "prompt" key (it has: {", ".join(row) or "none"})')
    prompt, ident = row["prompt"], row.get("id", default_id)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ModescopeError(f'{where}: "prompt" must be a non-empty string')
    if not isinstance(ident, str | int) or isinstance(ident, bool) or not str(ident).strip():
        raise ModescopeError(f'{where}: "id" must be a non-empty string or an integer')
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt")}
    return PromptItem(str(ident), prompt, meta)


def from_list(prompts: Sequence[str | dict[str, Any] | PromptItem], source: str = "prompts") -> list[PromptItem]:
    """Prompts given inline (a suite's `prompts = [...]`, a Python list): strings are numbered from 1."""
    items: list[PromptItem] = []
    seen: set[str] = set()
    for number, entry in enumerate(prompts, start=1):
        where = f"{source}[{number - 1}]"
        if isinstance(entry, PromptItem):
            item = entry
        elif isinstance(entry, str):
            if not entry.strip():
                raise ModescopeError(f"{where}: a prompt is empty; give non-empty prompts")
            item = PromptItem(str(number), entry)
        else:
            item = _item(entry, where, default_id=str(number))
        if item.id in seen:
            raise ModescopeError(f"{where}: id {item.id!r} is used twice; ids must be unique")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise ModescopeError(f"{source} is empty; give at least one prompt")
    return items


def apply_template(items: Sequence[PromptItem], template: str | None, variables: dict[str, str]) -> list[PromptItem]:
    """Each prompt put into a template such as "Q: ${prompt}\\nA:" (with the suite's variables and the
    prompt's own string metadata filled in too); without a template the prompts are as given."""
    if template is None:
        return list(items)
    rendered = []
    for item in items:
        values = {**variables, **{k: v for k, v in item.meta.items() if isinstance(v, str)}, "prompt": item.text}
        try:
            text = string.Template(template).substitute(values)
        except KeyError as exc:
            raise ModescopeError(
                f"the template uses ${{{exc.args[0]}}}, which neither the variables nor prompt {item.id!r} define; "
                "use ${prompt} for the prompt's text (write $$ for a literal $)"
            ) from None
        except ValueError as exc:
            raise ModescopeError(f"bad placeholder in the template ({exc}); write $$ for a literal $") from None
        rendered.append(PromptItem(item.id, text, item.meta))
    return rendered
