"""Experiment files: TOML validated by pydantic, with errors that name the bad key and its line.

A suite names its models and a list of probes. Prompts are inline (`prompt = "..."`) or read from a file
next to the suite (`prompt_file = "x.txt"`), and may use `${variable}` placeholders filled from the
suite's `[variables]` table (and from a probe's own `variables`). Example:

    name = "mini"
    [variables]
    question = "Are bugs real?"

    [[models]]
    name = "gemma-3-270m"

    [[models]]
    name = "smollm2-135m-instruct"
    chat = true            # prompts reach this model through its chat template, unless a probe says otherwise

    [[probes]]
    name = "bugs"
    kind = "sample"
    prompt = "Q: ${question}\\nA:"
    n = 16

A model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp, an API) is `NAME@BASE_URL`, as on the
command line, with three keys of its own (for such models only):

    [[models]]
    name = "tuned-vllm"
    model = "tuned@http://127.0.0.1:8000/v1"
    tokenizer = "smollm2-135m-instruct"  # a preset, folder or cached HF id; default: NAME itself
    max_concurrency = 8                  # requests in flight (default 8)
    max_logprobs = 20                    # cap on alternatives asked per position (top-k; 0: sampling only)

`modescope run --tokenizer/--max-concurrency/--max-logprobs` override these keys when given. The cache key
of such a model is its NAME@URL spec with its tokenizer and max_logprobs: the server is never asked.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from modescope.errors import ModescopeError
from modescope.remedies.grid import DEFAULT_GRID

if TYPE_CHECKING:
    from modescope.suites.prompt_sets import PromptItem

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(Strict):
    """A model of the suite: `name` labels it in results; `model` says what to load (default: the name)."""

    name: str
    model: str | None = None
    chat: bool = False  # render prompts through the chat template (probes may override)
    system: str | None = None  # system message when chatting
    # for a model behind a server (NAME@URL) only; None: load()'s default
    tokenizer: str | None = Field(default=None, min_length=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_logprobs: int | None = Field(default=None, ge=0)
    # what one Ray worker holding this model reserves (`modescope run --ray`); None: Ray's default
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)

    @property
    def load_name(self) -> str:
        return self.model or self.name

    def server_options(self) -> dict[str, Any]:
        """The server keys that are set, as keyword arguments of `modescope.models.load`."""
        return {key: getattr(self, key) for key in SERVER_KEYS if getattr(self, key) is not None}

    @model_serializer(mode="wrap")
    def _drop_unset_server_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # unset server keys are left out, so suite hashes (and stored model lists) of suites without servers
        # stay what they were before these keys existed
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k not in OPTIONAL_KEYS or v is not None}


SERVER_KEYS = ("tokenizer", "max_concurrency", "max_logprobs")
OPTIONAL_KEYS = (*SERVER_KEYS, "num_cpus", "num_gpus")


class ProbeBase(Strict):
    name: str
    title: str | None = None
    prompt: str | None = None
    prompt_file: str | None = None
    # a prompt set instead of one prompt: a .jsonl/.txt file next to the suite (or a built-in set's name),
    # or a list of prompts (strings, or tables with id and prompt); `template` wraps each, e.g. "Q: ${prompt}\nA:"
    prompts_file: str | None = None
    prompts: list[str | dict[str, Any]] | None = None
    template: str | None = None
    chat: bool | None = None  # None: each model's own setting; True/False: for every model with a template
    system: str | None = None
    prefill: str = ""
    models: list[str] | None = None  # a subset of the suite's models, by name
    variables: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("a probe name uses letters, digits, '_', '-' and '.' only (it names the probe in --only)")
        return value

    @model_validator(mode="after")
    def _one_prompt(self) -> ProbeBase:
        given = [k for k in ("prompt", "prompt_file", "prompts_file", "prompts") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of prompt, prompt_file, prompts_file and prompts")
        if self.template is not None and not self.is_prompt_set:
            raise ValueError("template wraps the prompts of a prompt set (prompts_file or prompts); put it in prompt")
        return self

    # keys added after suites were in use: left out while they hold their default, so the suites without them
    # keep their hashes and cache keys (like ModelEntry's server keys)
    later_keys: ClassVar[tuple[str, ...]] = ("prompts_file", "prompts", "template")

    @model_serializer(mode="wrap")
    def _drop_later_keys_at_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        fields = type(self).model_fields
        return {k: v for k, v in data.items() if k not in self.later_keys or getattr(self, k) != fields[k].default}

    @property
    def is_prompt_set(self) -> bool:
        return self.prompts_file is not None or self.prompts is not None


class Candidates(Strict):
    integers: tuple[int, int] | None = None
    choices: list[str] | None = None

    def values(self) -> list[str] | None:
        from modescope.probes import candidates

        if self.integers is not None and self.choices is not None:
            raise ModescopeError("give integers or choices, not both")
        if self.integers is not None:
            return candidates.integers(*self.integers)
        if self.choices is not None:
            return candidates.choices(self.choices)
        return None


class DistributionProbe(ProbeBase, Candidates):
    kind: Literal["distribution"]
    leading_space: Literal["optional", "required", "none"] = "optional"
    tokenizations: Literal["all", "canonical"] = "all"
    temperature: float = 1.0

    @model_validator(mode="after")
    def _has_candidates(self) -> DistributionProbe:
        if self.integers is None and self.choices is None:
            raise ValueError("a distribution probe needs integers = [LO, HI] or choices = [...]")
        return self


class SampleProbe(ProbeBase):
    kind: Literal["sample"]
    n: int = Field(16, ge=1, le=256)
    max_tokens: int = Field(48, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, lt=1)
    typical_p: float = Field(1.0, gt=0, le=1)
    top_n_sigma: float | None = Field(None, gt=0)
    xtc_threshold: float = Field(0.1, ge=0, le=1)
    xtc_probability: float = Field(0.0, ge=0, le=1)
    sampler_order: list[str] | None = None  # the samplers' order (default: modescope's)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    # remedies besides the sampler chain (see modescope.remedies): a prompt strategy, and base-guided decoding
    strategy: Literal["direct", "vary", "few-shot", "verbalized"] = "direct"
    k: int = Field(5, ge=2, le=20)  # responses per generation of the verbalized strategy
    guide: str | None = None  # a model with the same tokenizer (the tuned model's base), mixed in with guide_alpha
    guide_alpha: float = Field(0.5, ge=0, le=1)
    guide_mix: Literal["geometric", "arithmetic"] = "geometric"

    later_keys: ClassVar[tuple[str, ...]] = (
        *ProbeBase.later_keys,
        "typical_p",
        "top_n_sigma",
        "xtc_threshold",
        "xtc_probability",
        "sampler_order",
        "strategy",
        "k",
        "guide",
        "guide_alpha",
        "guide_mix",
    )


class TemperatureProbe(ProbeBase, Candidates):
    kind: Literal["temperature"]
    temperatures: list[float] = Field(default_factory=lambda: [0.5, 1.0, 1.5, 1.9], min_length=1)
    n: int = Field(12, ge=1, le=256)
    max_tokens: int = Field(32, ge=1, le=1024)
    seed: int = 0
    tokenizations: Literal["all", "canonical"] = "all"

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(not t >= 0 for t in values):
            raise ValueError("temperatures are 0 (greedy) or positive")
        return values


class AttractorProbe(ProbeBase):
    kind: Literal["attractor"]
    max_tokens: int = Field(48, ge=2, le=1024)
    swap_positions: int = Field(5, ge=0)
    alternatives: int = Field(3, ge=2)
    edits: list[str] = Field(default_factory=list)  # "I:J:TEXT" as in `modescope attractor --edit`
    detours: list[int] = Field(default_factory=list)
    criterion: Literal["sentence", "edit", "embedding"] = "sentence"
    threshold: float = Field(0.9, ge=0, le=1)
    seed: int = 0


class ForksProbe(ProbeBase):
    kind: Literal["forks"]
    max_tokens: int = Field(24, ge=1, le=256)
    samples: int = Field(4, ge=1, le=64)
    threshold: float = Field(0.05, gt=0, lt=1)
    max_alternatives: int = Field(3, ge=1)
    outcome_regex: str | None = None
    seed: int = 0


class MultiverseProbe(ProbeBase):
    kind: Literal["multiverse"]
    depth: int = Field(4, ge=1, le=64)
    cutoff: float = Field(0.01, gt=0, lt=1)
    max_nodes: int = Field(2000, ge=1)
    prefix: str = ""
    merge: bool = True


class FrontierProbe(ProbeBase):
    """Remedies for collapse on a diversity-quality frontier (see `modescope.probes.frontier`): every point
    of the `remedies` grid ("min_p=0.05,0.1", "verbalized=5", "guided=0.5", ...) on every prompt."""

    kind: Literal["frontier"]
    remedies: list[str] = Field(default_factory=lambda: list(DEFAULT_GRID))
    n: int = Field(8, ge=2, le=256)
    max_tokens: int = Field(32, ge=1, le=512)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)  # for every point but verbalized (its responses are lines)
    xtc_threshold: float = Field(0.1, ge=0, le=1)
    guide: str | None = None  # the guide model of base-guided points: the tuned model's base, same tokenizer
    guide_mix: Literal["geometric", "arithmetic"] = "geometric"
    reference: str | None = None  # the model that scores fluency (default: each model itself)
    reward: str | None = None  # sentiment, format or module:function, scored on every text
    diversity: Literal["embedding_diversity", "class_share", "distinct_2"] = "embedding_diversity"
    quality: Literal["fluency", "reward", "parse_rate"] = "fluency"

    @model_validator(mode="after")
    def _grid(self) -> FrontierProbe:
        from modescope.remedies.grid import parse_grid, uses_guide

        try:
            points = parse_grid(self.remedies)
        except ModescopeError as exc:
            raise ValueError(str(exc)) from None
        if uses_guide(points) and self.guide is None:
            raise ValueError("the guided remedy needs guide = the tuned model's base (a model with the same tokenizer)")
        if self.quality == "reward" and self.reward is None:
            raise ValueError("quality = reward needs a reward (sentiment, format or module:function)")
        return self


Probe = Annotated[
    DistributionProbe | SampleProbe | TemperatureProbe | AttractorProbe | ForksProbe | MultiverseProbe | FrontierProbe,
    Field(discriminator="kind"),
]
KINDS = ["distribution", "sample", "temperature", "attractor", "forks", "multiverse", "frontier"]


class Suite(Strict):
    name: str
    description: str = ""
    variables: dict[str, str] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(default_factory=list)
    probes: list[Probe] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        for what, names in (("model", [m.name for m in self.models]), ("probe", [p.name for p in self.probes])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what} name {twice[0]!r} is used twice; give each {what} its own name")
        known = {m.name for m in self.models}
        for probe in self.probes:
            unknown = [m for m in probe.models or [] if known and m not in known]
            if unknown:
                raise ValueError(f"probe {probe.name!r} names model {unknown[0]!r}, which the suite does not list")
        return self


# --- loading -----------------------------------------------------------------------------------------------


def _line_of(text: str, location: tuple[Any, ...]) -> int | None:
    """The line of the key a validation error points at: the n-th [[table]] header, then the key inside it.
    TOML parsers keep no positions, so this searches the text (exact for the usual one-key-per-line style)."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    rest = list(location)
    if len(rest) >= 2 and isinstance(rest[0], str) and isinstance(rest[1], int):
        table, index = rest[0], rest[1]
        headers = [k for k, line in enumerate(lines) if re.match(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]", line)]
        if index >= len(headers):
            return None
        start = headers[index]
        following = [k for k, line in enumerate(lines) if k > start and re.match(r"^\s*\[", line)]
        end = following[0] if following else len(lines)
        rest = [r for r in rest[2:] if isinstance(r, str) and r not in KINDS]
        if not rest:
            return start + 1
    elif rest and isinstance(rest[0], str):
        following = [k for k, line in enumerate(lines) if re.match(r"^\s*\[", line)]
        end = following[0] if following else len(lines)
    key = next((r for r in rest if isinstance(r, str)), None)
    if key is None:
        return None
    for k in range(start, end):
        if re.match(rf"^\s*{re.escape(key)}\s*=", lines[k]):
            return k + 1
    return start + 1 if start else None


def _describe(error: ValidationError, text: str, source: str) -> str:
    first = error.errors()[0]
    location = tuple(first["loc"])
    if str(first["type"]).startswith("union_tag"):  # the error is about the probe's kind key
        location = (*location, "kind")
    path = ".".join(str(p) for p in location if not (isinstance(p, str) and p in KINDS)) or "(top level)"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against the probe kind's parameters)"
    elif first["type"] == "union_tag_invalid":
        message = f"unknown probe kind; use one of {', '.join(KINDS)}"
    elif first["type"] == "union_tag_not_found":
        message = f"a probe needs kind = one of {', '.join(KINDS)}"
    elif first["type"] == "missing":
        message = "required key is missing"
    line = _line_of(text, location)
    where = f"{source}, line {line}" if line else source
    more = f" (and {len(error.errors()) - 1} more problems)" if len(error.errors()) > 1 else ""
    return f"{where}: {path}: {message}{more}"


def parse_suite(text: str, source: str = "suite") -> Suite:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModescopeError(f"{source} is not valid TOML: {exc}") from None
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise ModescopeError(_describe(exc, text, source)) from None


BUILTIN = Path(__file__).parent


def builtin_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN.glob("*.toml"))}


def locate_suite(name_or_path: str) -> Path:
    """A built-in suite by name, or a TOML file."""
    builtin = builtin_suites()
    if name_or_path in builtin:
        return builtin[name_or_path]
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(builtin) or "none"
        raise ModescopeError(f"no suite '{name_or_path}': not a built-in suite ({known}) nor a TOML file")
    return path


def load_suite(name_or_path: str) -> tuple[Suite, Path, str]:
    """The validated suite, its file, and its text."""
    path = locate_suite(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModescopeError(f"cannot read the suite file '{path}': {exc}") from None
    return parse_suite(text, str(path)), path, text


def render_prompt(suite: Suite, probe: ProbeBase, folder: Path) -> str:
    """The probe's prompt text with its ${variables} filled in."""
    if probe.prompt is not None:
        template = probe.prompt
    else:
        file = folder / str(probe.prompt_file)
        try:
            template = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModescopeError(f"probe '{probe.name}': cannot read prompt_file '{file}': {exc}") from None
    try:
        return string.Template(template).substitute({**suite.variables, **probe.variables})
    except KeyError as exc:
        raise ModescopeError(
            f"probe '{probe.name}': the prompt uses ${{{exc.args[0]}}} but no variable of that name is defined; "
            "add it under [variables] (write $$ for a literal $)"
        ) from None
    except ValueError as exc:
        raise ModescopeError(
            f"probe '{probe.name}': bad placeholder in the prompt ({exc}); write $$ for a literal $"
        ) from None


def suite_hash(suite: Suite, prompts: dict[str, str]) -> str:
    """Identity of what a suite asks for: its validated content and every rendered prompt."""
    payload = json.dumps([suite.model_dump(mode="json"), prompts], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def render_prompt_set(suite: Suite, probe: ProbeBase, folder: Path) -> list[PromptItem]:
    """The prompts of a prompt-set probe, each put into the probe's template (with the variables filled in)."""
    from modescope.suites import prompt_sets

    if probe.prompts_file is not None:
        items = prompt_sets.load_prompts_file(probe.prompts_file, folder)
    else:
        items = prompt_sets.from_list(probe.prompts or [], f"probe '{probe.name}': prompts")
    try:
        return prompt_sets.apply_template(items, probe.template, {**suite.variables, **probe.variables})
    except ModescopeError as exc:
        raise ModescopeError(f"probe '{probe.name}': {exc}") from None
