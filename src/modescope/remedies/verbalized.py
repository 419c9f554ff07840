"""Verbalized Sampling (Zhang et al. 2025, ICML 2026): ask for k responses with their probabilities, and read them.

The prompt asks for exactly k responses, one per numbered line, each line starting with its probability:

    1. (probability 0.30) a response

Why this format and not the paper's `<response><text>..</text><probability>..</probability></response>`:
small models (100M-300M parameters) continue numbered lists readily, while they lose track of nested tags
(an unclosed `</text>`, a tag missing its partner) and the tags cost about fifteen tokens per response of a
short context. The probability comes first, in the same words on every line, so the line has a fixed start
that is easy to imitate; and a response cut off by the token limit loses its text, never half its number.

`parse_verbalized` reads that format and its reasonable variants (see its docstring), in time linear in the
text: every pattern is matched line by line with bounded repetitions, so no input makes a regex backtrack
for long.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from modescope.errors import ModescopeError

MIN_K, MAX_K = 2, 20

FORMAT_EXAMPLE = "1. (probability 0.30) first response"
"""The one example line the prompt shows."""


def check_k(k: int) -> int:
    """`k` when it is a number of responses to ask for (2 to 20); else a ModescopeError."""
    if not MIN_K <= k <= MAX_K:
        raise ModescopeError(f"k (responses per generation) must be from {MIN_K} to {MAX_K} (got {k})")
    return k


def verbalized_prompt(prompt: str, k: int = 5) -> str:
    """The Verbalized Sampling text for `prompt`:

        Give {k} different responses to the prompt below, each with its probability (a number from 0 to 1).
        Write one response per line, in this format:
        1. (probability 0.30) first response

        Prompt: {prompt}
        Responses:

    A base model continues after `Responses:` with the list; a chat model gets the text as its user message.
    The prompt comes after the instructions so that a story opening is still read as the thing to respond to.
    """
    check_k(k)
    return (
        f"Give {k} different responses to the prompt below, each with its probability (a number from 0 to 1).\n"
        f"Write one response per line, in this format:\n{FORMAT_EXAMPLE}\n\n"
        f"Prompt: {prompt}\nResponses:"
    )


@dataclass(frozen=True)
class VerbalizedResponse:
    """One response read from a Verbalized Sampling output."""

    text: str
    stated: float  # the probability the model wrote, in [0, 1] (a percentage divided by 100)
    # the same response (by `response_key`) as an earlier one of this output: kept, so nothing the model
    # wrote is lost, but the output then does not count as complete (it asked for k *different* responses)
    duplicate: bool = False


@dataclass(frozen=True)
class VerbalizedParse:
    """What one output said: the responses read, the pieces that looked like responses but could not be read
    (each with its reason, in `reasons`), and whether it is a complete answer: k distinct responses and
    nothing unreadable."""

    responses: list[VerbalizedResponse]
    unparsed: list[str]
    complete: bool
    problem: str | None  # why it is not complete, in words; None when it is
    reasons: list[str] = field(default_factory=list)  # why each piece of `unparsed` could not be read

    @property
    def duplicates(self) -> int:
        return sum(r.duplicate for r in self.responses)


def response_key(text: str) -> str:
    """The form two responses are compared in: Unicode NFKC, case folded, runs of whitespace as one space,
    and without surrounding quotes or trailing punctuation (`.!?,;:…`). "Blue." and " blue" are one response."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return folded.strip(_QUOTES + " ").rstrip(".!?,;:…").strip(_QUOTES + " ")


def normalized(responses: Sequence[VerbalizedResponse]) -> list[float]:
    """The stated probabilities rescaled to sum to 1 (models rarely make them add up). Every response keeps
    its own share, duplicates included. All zero (or none stated at all): equal shares, since the model then
    stated no preference."""
    total = math.fsum(r.stated for r in responses)
    if total <= 0:
        return [1.0 / len(responses)] * len(responses) if responses else []
    return [r.stated / total for r in responses]


def parse_rate(parses: Sequence[VerbalizedParse]) -> float:
    """The share of outputs that are complete (k distinct, readable responses); NaN for no outputs."""
    return sum(p.complete for p in parses) / len(parses) if parses else math.nan


# --- the parser ----------------------------------------------------------------------------------------------

_QUOTES = "\"'`“”‘’«»*"
_SEPARATORS = " \t-–—:|,;=~>"
_OPENERS = {"(": ")", "[": "]", "{": "}"}
# a number: at most 12 digits on either side of the point and a short exponent, not glued to letters, digits or
# a further ".5" (so a long digit run or a version number is no number at all, and matching stays cheap)
_NUMBER = r"(?<![\w.])(?:\d{1,12}(?:\.\d{0,12})?|\.\d{1,12})(?:[eE][-+]?\d{1,4})?(?!\w|\.\d)"
_KEYWORD = re.compile(
    r"(?<![a-z])(?:probability|prob|p)[ \t]{0,3}(?:[:=]|is)?[ \t]{0,3}"
    rf"(?P<open>\()?(?P<num>[-+]?{_NUMBER})[ \t]{{0,2}}(?P<pct>%)?(?(open)\))",
    re.IGNORECASE,
)
_KEYWORD_WORD = re.compile(r"(?<![a-z])prob(?:ability)?(?![a-z])", re.IGNORECASE)
_BRACKETED = re.compile(rf"[(\[{{][ \t]{{0,2}}(?P<num>[-+]?{_NUMBER})[ \t]{{0,2}}(?P<pct>%)?[ \t]{{0,2}}[)\]}}]")
_BARE = re.compile(rf"(?P<num>{_NUMBER})[ \t]{{0,2}}(?P<pct>%)?")
_WHOLE_NUMBER = re.compile(rf"[ \t]{{0,3}}(?P<num>[-+]?{_NUMBER})[ \t]{{0,2}}(?P<pct>%)?[ \t]{{0,3}}")
_MARKER = re.compile(
    r"(?:(?:response|option|answer)[ \t]{0,3}#?[ \t]{0,3}(?P<word>\d{1,3})[ \t]{0,3}[:.)\-]"
    r"|\(?(?P<num>\d{1,3})[.):]|#(?P<hash>\d{1,3})[.):]?|[-*•+·‣▪])(?:[ \t]+|$)",
    re.IGNORECASE,
)
_INLINE = re.compile(r"(?:(?<=\s)|^)(\d{1,3})[.)][ \t]+")
_LABEL = re.compile(r"(?:text|response|answer)[ \t]{0,3}[:=][ \t]{0,3}", re.IGNORECASE)
_RESPONSE_TAG = re.compile("<response>", re.IGNORECASE)
_RESPONSE_END = re.compile("</response>", re.IGNORECASE)
_TAGS = re.compile("</?(?:response|text|probability)>", re.IGNORECASE)


@dataclass
class _Piece:
    """A stretch of the output that looks like one response: its text, where it ends in the output, its list
    number (None when it had no numbered marker), whether it came in `<response>` tags, whether it already
    took its one continuation line, and whether the token limit may have cut it."""

    text: str
    end: int
    number: int | None = None
    xml: bool = False
    continued: bool = False
    cut: bool = False


@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    value: float | None  # None: too large to be a float
    written: str


def parse_verbalized(text: str, k: int, truncated: bool = False) -> VerbalizedParse:
    """Read the responses and stated probabilities of one Verbalized Sampling output. Never raises on any
    text, and runs in time linear in its length.

    Accepted, besides the prompt's `1. (probability 0.30) text`:

    - items numbered `1.`, `1)`, `(1)`, `#1`, `1:`, `Response 1:`, or bulleted (`-`, `*`, `•`, `+`), or not
      marked at all when the line carries a keyword or bracketed probability (a bare number on an unmarked
      line is chatter: "80% of people pick blue."); numbered items run together on one line
      ("1. .. 2. .."), split where the numbers go on in order and both sides carry a probability;
    - the probability before or after the text: `probability 0.3`, `probability: 0.3`, `Probability = 30%`,
      `prob=0.3`, `p=0.3`, `(0.3)`, `[0.3]`, `(30%)`, or a bare `0.3` or `30%` at the start or end of the
      item; percentages are divided by 100. A keyword form wins over a bracketed one, which wins over a bare
      one; within a form, a readable probability at the start or end of the item (so digits and percentages
      inside the text stay text);
    - an item split over two lines: an item still missing its probability or its text takes the next line
      (one line at most; a blank line ends every item);
    - the paper's `<response><text>..</text><probability>..</probability></response>`, nested or unclosed
      `<response>` tags included (a response's text runs to its first `</text>`; other tags inside it are
      dropped);
    - markdown bold, surrounding quotes, `Text:` labels, separators (` - `, `:`, `|`), and text before and
      after the list (lines without a marker or a probability are not items).

    Not read, and listed in `unparsed` with the reason in `reasons`: a probability that is not a number or
    lies outside [0, 1] (`1e308`, `1.5`, `30` without a percent sign), an item without a probability, an
    empty text, and with `truncated` (the output hit the token limit) the last item when nothing follows it,
    since its text may be cut short. Duplicates are kept and flagged (`VerbalizedResponse.duplicate`).
    Only a `k` outside 2..20 raises (a ModescopeError).
    """
    check_k(k)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces = list(_xml_pieces(text) if _RESPONSE_TAG.search(text) else _line_pieces(text))
    if truncated and pieces and not text[pieces[-1].end :].strip():
        pieces[-1].cut = True
    responses: list[VerbalizedResponse] = []
    unparsed: list[str] = []
    reasons: list[str] = []
    seen: set[str] = set()
    for piece in pieces:
        read = _read_piece(piece)
        if isinstance(read, str):
            unparsed.append(piece.text.strip())
            reasons.append(read)
            continue
        key = response_key(read.text)
        responses.append(VerbalizedResponse(read.text, read.stated, duplicate=key in seen))
        seen.add(key)
    problem = _problem(text, k, responses, reasons)
    return VerbalizedParse(responses, unparsed, problem is None, problem, reasons)


def _problem(text: str, k: int, responses: list[VerbalizedResponse], reasons: list[str]) -> str | None:
    if not text.strip():
        return "the output is empty"
    if reasons:
        return f"{len(reasons)} item(s) could not be read (first: {reasons[0]})"
    if not responses:
        return "no response with a probability was found"
    if len(responses) != k:
        return f"{len(responses)} responses where {k} were asked for"
    duplicate = next((r for r in responses if r.duplicate), None)
    if duplicate is not None:
        return f"response {duplicate.text!r} is given more than once"
    return None


def _xml_pieces(text: str) -> Iterator[_Piece]:
    """One piece per `<response>` tag: what follows it up to `</response>` or the next `<response>`."""
    tags = list(_RESPONSE_TAG.finditer(text))
    for tag, following in zip(tags, [*tags[1:], None], strict=True):
        stop = following.start() if following else len(text)
        closing = _RESPONSE_END.search(text, tag.end(), stop)
        end = closing.start() if closing else stop
        body = text[tag.end() : end]
        if body.strip():  # nothing between two opening tags: a nested or repeated tag, not a response
            yield _Piece(body, end, xml=True)


def _line_pieces(text: str) -> Iterator[_Piece]:
    """The pieces of a list written line by line (see `parse_verbalized` for what starts and continues one)."""
    current: _Piece | None = None
    offset = 0
    for raw in text.split("\n"):
        offset += len(raw) + 1
        line = raw.replace("**", "").strip()
        marker = _MARKER.match(line) if line else None
        if current and (not line or marker or current.continued or _readable(current)):
            yield current
            current = None
        if marker:
            number = marker.group("num") or marker.group("hash") or marker.group("word")
            parts = _split_inline(line[marker.end() :], int(number) if number else None, offset - 1)
            yield from parts[:-1]
            current = parts[-1]
        elif current and line:
            current.text += " " + line
            current.end, current.continued = offset - 1, True
        elif line and _has_probability(line, bare=False):  # "80% of people say.." is chatter, not an item
            current = _Piece(line, offset - 1)
    if current:
        yield current


def _split_inline(rest: str, number: int | None, end: int) -> list[_Piece]:
    """An item's text, split where further numbered items follow on the same line ("1. a 2. b"): at the
    numbers that go on in order, and only where both sides carry a probability (so "the 2. place" stays whole).
    `end` is where the line ends in the output (the end of every piece of it: only the last piece of an output
    needs its end, to tell whether the token limit cut it)."""
    if number is None:
        return [_Piece(rest, end)]
    cuts: list[re.Match[str]] = []
    for found in _INLINE.finditer(rest):
        if int(found.group(1)) == number + len(cuts) + 1:
            cuts.append(found)
    bounds = [0, *[c.start() for c in cuts], len(rest)]
    starts = [0, *[c.end() for c in cuts]]
    carries = [_has_probability(rest[s:e]) for s, e in zip(starts, bounds[1:], strict=True)]
    groups = [[0]]  # the segments of each piece: a segment joins the previous piece unless both carry one
    for k in range(1, len(starts)):
        if carries[k] and carries[k - 1]:
            groups.append([k])
        else:
            groups[-1].append(k)
    return [_Piece(rest[starts[g[0]] : bounds[g[-1] + 1]], end, number + g[0]) for g in groups]


def _has_probability(text: str, bare: bool = True) -> bool:
    return bool(_KEYWORD.search(text) or _BRACKETED.search(text) or (bare and _bare_candidates(text)))


def _readable(piece: _Piece) -> bool:
    """Whether a piece already has both a probability and some text (then the next line is not its)."""
    return not isinstance(_read_piece(piece), str)


def _read_piece(piece: _Piece) -> VerbalizedResponse | str:
    """The response of a piece, or why it has none."""
    if piece.cut:
        return "cut off by the token limit"
    if piece.xml:
        return _read_tagged(piece.text)
    candidates, form = _candidates(piece.text)
    if not candidates:
        return "its probability is not a number" if _KEYWORD_WORD.search(piece.text) else "no probability"
    readable = [c for c in candidates if c.value is not None and 0.0 <= c.value <= 1.0]
    if not readable:
        return f"probability {candidates[0].written} is not a number in [0, 1]"
    chosen = _at_edge(piece.text, readable) or (readable[0] if form != "bare" else None)
    if chosen is None:
        return "no probability at the start or end of the item"
    answer = _clean(piece.text[: chosen.start], piece.text[chosen.end :])
    if not answer:
        return "empty response text"
    assert chosen.value is not None
    return VerbalizedResponse(answer, chosen.value)


def _read_tagged(body: str) -> VerbalizedResponse | str:
    """A `<response>` body: the text inside `<text>..</text>` and the number inside `<probability>..`; a body
    without a `<text>` tag is read like a line."""
    text, text_closed = _inside(body, "text")
    if text is None:
        return _read_piece(_Piece(_TAGS.sub(" ", body), 0))
    written, probability_closed = _inside(body, "probability")
    if written is None:
        return "no probability"
    if not probability_closed:
        return "its probability is not closed (it may be cut short)"
    number = _WHOLE_NUMBER.fullmatch(written)
    if number is None:
        return "its probability is not a number"
    value = _candidate(number).value
    if value is None or not 0.0 <= value <= 1.0:
        return f"probability {written.strip()} is not a number in [0, 1]"
    if not text_closed:
        return "its text is not closed (it may be cut short)"
    answer = _unquote(" ".join(_TAGS.sub(" ", text).split()))
    return VerbalizedResponse(answer, value) if answer else "empty response text"


def _inside(body: str, tag: str) -> tuple[str | None, bool]:
    """What follows the first `<tag>` up to `</tag>` (or the end), and whether the tag was closed."""
    opening = re.search(f"<{tag}>", body, re.IGNORECASE)
    if opening is None:
        return None, False
    closing = re.search(f"</{tag}>", body[opening.end() :], re.IGNORECASE)
    if closing is None:
        return body[opening.end() :], False
    return body[opening.end() : opening.end() + closing.start()], True


def _candidates(body: str) -> tuple[list[_Candidate], str]:
    """The probabilities written in an item, of the strongest form present: keyword, bracketed or bare."""
    keyword = [_candidate(m) for m in _KEYWORD.finditer(body)]
    if keyword:
        return keyword, "keyword"
    bracketed = [_candidate(m) for m in _BRACKETED.finditer(body)]
    if bracketed:
        return bracketed, "bracketed"
    return _bare_candidates(body), "bare"


def _bare_candidates(text: str) -> list[_Candidate]:
    """Bare numbers with a point or a percent sign, at the start or the end of the text only."""
    found = [_candidate(m) for m in _BARE.finditer(text) if "." in m.group("num") or m.group("pct")]
    first, last = _content_span(text, _SEPARATORS, _SEPARATORS + ".")
    return [c for c in found if c.start <= first or c.end >= last]


def _content_span(text: str, leading: str, trailing: str) -> tuple[int, int]:
    """Where `text` starts and ends without the `leading` characters before and `trailing` ones after (so a
    candidate at or before the start, or at or after the end, is at an edge: found once, in linear time)."""
    return len(text) - len(text.lstrip(leading)), len(text.rstrip(trailing))


def _candidate(match: re.Match[str]) -> _Candidate:
    written = match.group("num") + (match.group("pct") or "")
    value: float | None = float(match.group("num")) / (100.0 if match.group("pct") else 1.0)
    if value is not None and not math.isfinite(value):
        value = None
    return _Candidate(match.start(), match.end(), value, written)


def _at_edge(body: str, candidates: list[_Candidate]) -> _Candidate | None:
    """The first candidate with nothing but separators, brackets or quotes before it, else the last with
    nothing but those after it."""
    edge = _SEPARATORS + _QUOTES + "([{)]}."
    first, last = _content_span(body, edge, edge)
    at_start = [c for c in candidates if c.start <= first]
    at_end = [c for c in candidates if c.end >= last]
    return at_start[0] if at_start else at_end[-1] if at_end else None


def _clean(before: str, after: str) -> str:
    """The response text around its probability: without the brackets that held the probability, labels,
    separators and surrounding quotes."""
    before, after = before.rstrip(), after.lstrip()
    if not after.strip(_SEPARATORS + "."):  # "Blue 0.3." : the point ends the line, not the text
        after = ""
    if before and after and _OPENERS.get(before[-1]) == after[0]:
        before, after = before[:-1], after[1:]
    elif before and before[-1] in _OPENERS and not after:
        before = before[:-1]
    elif after and after[0] in _OPENERS.values() and not before:
        after = after[1:]
    text = " ".join(f"{before.strip(_SEPARATORS)} {after.strip(_SEPARATORS)}".split())
    label = _LABEL.match(text)
    if label:
        text = text[label.end() :]
    return _unquote(text.strip(_SEPARATORS))


def _unquote(text: str) -> str:
    """The text without quotes or emphasis that wrap all of it."""
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text
