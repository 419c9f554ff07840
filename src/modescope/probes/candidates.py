"""Answer sets whose probabilities a distribution probe computes."""

from __future__ import annotations

from pathlib import Path

from modescope.errors import ModescopeError

MAX_CANDIDATES = 100_000


def _check_size(count: int, max_candidates: int) -> None:
    if count == 0:
        raise ModescopeError("the candidate set is empty; give at least one candidate")
    if count > max_candidates:
        raise ModescopeError(
            f"{count:,} candidates is more than the limit of {max_candidates:,}; narrow the set or raise "
            "--max-candidates"
        )


def integers(lo: int, hi: int, max_candidates: int = MAX_CANDIDATES) -> list[str]:
    """Every integer from lo to hi inclusive, as decimal text."""
    if lo > hi:
        raise ModescopeError(f"integer range {lo}..{hi} is empty: LO must not exceed HI")
    _check_size(hi - lo + 1, max_candidates)
    return [str(i) for i in range(lo, hi + 1)]


def choices(items: list[str], max_candidates: int = MAX_CANDIDATES) -> list[str]:
    """An explicit list of answers (order kept, duplicates refused)."""
    _check_size(len(items), max_candidates)
    seen: set[str] = set()
    for item in items:
        if not item:
            raise ModescopeError("a candidate is the empty string; every candidate needs at least one character")
        if item in seen:
            raise ModescopeError(f"candidate {item!r} is listed twice; list each answer once")
        seen.add(item)
    return list(items)


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file's content, with a clear error when it is missing or not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ModescopeError(f"{what} '{path}' does not exist") from exc
    except IsADirectoryError as exc:
        raise ModescopeError(f"{what} '{path}' is a folder; give a file") from exc
    except UnicodeDecodeError as exc:
        raise ModescopeError(f"{what} '{path}' is not valid UTF-8 (byte {exc.start}); save it as UTF-8") from exc


def choices_from_file(path: str | Path, max_candidates: int = MAX_CANDIDATES) -> list[str]:
    """One answer per line; blank lines are skipped."""
    text = read_text_file(Path(path), "choices file")
    return choices([line for line in text.splitlines() if line.strip()], max_candidates)
