"""Request bodies of the playground API, and the documented caps that bound them.

Caps are checked in code against `Limits` (not baked into the pydantic fields) so that an app can be
created with other caps, e.g. tiny ones in tests; every cap is answered with a 4xx JSON error that names it.

The response models below are the contract the OpenAPI document states for each answer (errors, JSON bodies,
server-sent events); `openapi_document` adds what only the running app knows (the served model names, its
caps), so a client or a fuzzer reading `/openapi.json` learns the real bounds of every field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import models_json_schema


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (documented in the README and served by GET /api/models)."""

    max_body_bytes: int = 256 * 1024  # request body size (413 beyond)
    max_prompt_chars: int = 16_000  # prompt, system message, prefill and edit text, each
    max_models: int = 4  # models per request
    max_n: int = 16  # completions per model and request
    max_tokens: int = 256  # new tokens per completion
    max_top_k: int = 50  # alternatives recorded per position
    max_prefix_tokens: int = 4096  # token ids of a branch prefix
    max_stop: int = 8  # stop strings
    max_candidates: int = 1000  # answers of a distribution probe
    max_depth: int = 8  # multiverse depth
    max_nodes: int = 3000  # multiverse tree size
    max_attractor_tokens: int = 128  # mainline length of an attractor experiment
    max_perturbations: int = 64  # swap positions x alternatives + edits + detours
    max_branch_nodes: int = 2000  # nodes of the browser's branch tree (checked by the page on growth and import)
    # requests waiting for the worker (503 beyond): room for a burst of 50 generate requests; a waiting request
    # holds only its body, the memory of decoding is bounded by the batch cap below
    queue_size: int = 64
    # rows (completions) decoded together in one batch of a model; a batch holds about rows x vocabulary float64
    # distributions (64 x 262,144 x 8 bytes = 128 MiB for gemma-3-270m), and at most max_models batches decode
    # in turn
    max_batch_rows: int = 64


class _Strict(BaseModel):
    # strict: a JSON value of another type is refused, not converted (false is not 0, "1" is not 1), as the
    # OpenAPI document says; a JSON integer still fills a float field
    model_config = ConfigDict(extra="forbid", strict=True)


def _integral(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer; strict validation alone would refuse it
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]  # an integer, not a boolean or a string
TokenId = Annotated[Int, Field(ge=0)]


class PromptIn(_Strict):
    text: str = Field(description="The prompt text (plain), or the user message when `chat` is true.")
    chat: bool = Field(default=False, description="Render through the model's chat template.")
    system: str | None = Field(default=None, description="System message (chat only).")
    prefill: str = Field(default="", description="Start of the assistant's reply (chat only).")


class SamplerIn(_Strict):
    """The sampler chain (see `modescope.engine.samplers`); every default is off, temperature 0 is greedy."""

    temperature: float = 1.0
    top_k: Int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    top_n_sigma: float | None = None
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0


class Decoding(_Strict):
    n: Int = Field(default=1, description="Completions per model (cap: max_n).")
    max_tokens: Int = Field(default=48, description="New tokens per completion (cap: max_tokens).")
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    # a 64-bit signed integer (torch's generators take no wider seed)
    seed: Int | None = Field(
        default=0, ge=-(2**63), le=2**63 - 1, description="The same seed gives the same samples; null draws afresh."
    )
    top_k: Int = Field(default=10, description="Alternatives recorded per position (cap: max_top_k).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (kept in the text).")


class RemedyIn(_Strict):
    """A remedy for mode collapse applied to the sampling (see `modescope.remedies` and `web/remedy.py`)."""

    strategy: str = Field(default="direct", description="Prompt strategy: direct, vary, few-shot or verbalized.")
    k: Int = Field(default=5, description="Responses the verbalized strategy asks for (2 to 20).")
    guide: str | None = Field(default=None, description="Another served model (same tokenizer) to guide with.")
    guide_alpha: float = Field(default=0.5, description="The guide's weight: 0 the model alone, 1 the guide alone.")
    guide_mix: str = Field(default="geometric", description="geometric (p^(1-a) q^a, renormalized) or arithmetic.")


class GenerateIn(Decoding):
    models: list[str] = Field(description="Served model names; one column each.")
    prompt: PromptIn
    remedy: RemedyIn | None = Field(default=None, description="A remedy for mode collapse; null samples as is.")


class RegenerateIn(Decoding):
    model: str
    prompt: PromptIn
    prefix_ids: list[TokenId] = Field(default_factory=list, description="Continuation tokens kept (this model's ids).")
    edit: str = Field(default="", description="Text appended after prefix_ids (encoded without special tokens).")
    remedy: RemedyIn | None = Field(default=None, description="The remedy of the run branched (null: none).")


class NextIn(_Strict):
    model: str
    prompt: PromptIn
    prefix_ids: list[TokenId] = Field(default_factory=list)
    top_k: Int = Field(default=20, description="Most likely next tokens returned (cap: max_top_k).")


class TokenizeIn(_Strict):
    model: str
    prompt: PromptIn | None = Field(default=None, description="Tokenize as a prompt (BOS, chat template).")
    text: str | None = Field(default=None, description="Tokenize as continuation text (no special tokens).")


class DistributionIn(_Strict):
    models: list[str]
    prompt: PromptIn
    # not strict itself: a JSON array fills the pair (its items stay strict integers)
    integers: tuple[Int, Int] | None = Field(default=None, strict=False, description="Every integer LO..HI inclusive.")
    choices: list[str] | None = Field(default=None, description="An explicit list of answers.")
    leading_space: Literal["optional", "required", "none"] = "optional"
    tokenizations: Literal["all", "canonical"] = "all"
    temperature: float = 1.0


class MultiverseIn(_Strict):
    models: list[str]
    prompt: PromptIn
    prefix: str = Field(default="", description="The branch the tree starts from (text after the prompt).")
    prefix_paths: list[list[TokenId]] | None = Field(default=None, description="The branch as token ids, per model.")
    depth: Int = 4
    cutoff: float = 0.01
    max_nodes: Int = Field(default=500, description="Most nodes in the tree (cap: max_nodes).")
    merge: bool = True


class EditIn(_Strict):
    start: Int
    end: Int
    text: str


class AttractorIn(_Strict):
    models: list[str]
    prompt: PromptIn
    max_tokens: Int = 32
    swap_positions: Int = 3
    alternatives: Int = 2
    edits: list[EditIn] = Field(default_factory=list)
    detours: list[Int] = Field(default_factory=list, description="Mainline positions of sampled detours.")
    detour_tokens: Int = 3
    criterion: Literal["sentence", "edit"] = "sentence"
    threshold: float = 0.9


# --- responses -------------------------------------------------------------------------------------------------
# The routes build plain dicts; these models are the contract the OpenAPI schema states for them (and the
# API fuzz tests hold the app to). Every float that is not finite travels as null (`jsonsafe.finite`).

Number = float | None  # null: not finite, or not measured


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    """Every error answer: one line that says what to change."""

    error: str = Field(description="What went wrong and what to change.")


class StreamErrorOut(ErrorOut):
    """The `error` event that ends a stream when the call failed after the answer started."""

    status: int = Field(ge=400, le=499, description="The 4xx status the error would have had before the stream.")


class CapabilitiesOut(BaseModel):
    """What a backend shows (`Capabilities.metadata()`); open to fields a backend adds."""

    tier: Literal["full", "top-k", "sample-only"]
    top_k: int | None
    scores_sequences: bool
    chat_only: bool
    chat_template: Literal["local", "server"]
    server: str | None
    precision: str | None = Field(None, description="The weights' type (float32, bfloat16); null when unknown.")


class ServedModelOut(_Out):
    name: str
    preselected: bool
    loaded: bool
    chat: bool | None = Field(description="Has a chat template; null until the model is loaded.")
    capabilities: CapabilitiesOut | None = Field(description="Null until the model is loaded.")


class QueueOut(_Out):
    pending: int = Field(ge=0, description="Requests waiting for the worker.")


class RemedyKOut(_Out):
    min: int
    max: int
    default: int


class RemedyOptionsOut(_Out):
    strategies: list[str]
    mixes: list[str]
    k: RemedyKOut


class ModelsOut(_Out):
    models: list[ServedModelOut]
    limits: Limits
    queue: QueueOut
    remedies: RemedyOptionsOut


class TokenOut(_Out):
    id: int
    text: str
    special: bool


class TokenizeOut(_Out):
    model: str
    tokens: list[TokenOut]


class AlternativeOut(_Out):
    id: int
    text: str
    logprob: Number


class TokenRecordOut(_Out):
    """One generated token (log-probabilities in nats, entropy in bits) and the likeliest alternatives."""

    id: int
    text: str
    logprob: Number = Field(description="Under the distribution sampled from (after the sampler chain).")
    raw_logprob: Number = Field(description="Under the raw model.")
    entropy_bits: Number
    special: bool
    top: list[AlternativeOut]


class VerbalizedResponseOut(_Out):
    text: str
    stated: Number = Field(description="The probability the model wrote, in [0, 1].")
    duplicate: bool


class VerbalizedOut(_Out):
    responses: list[VerbalizedResponseOut]
    unparsed: int
    complete: bool
    problem: str | None


class CompletionOut(_Out):
    text: str
    finish_reason: Literal["eos", "stop", "length"]
    tokens: list[TokenRecordOut]
    verbalized: VerbalizedOut | None = Field(default=None, description="Only with the verbalized strategy.")


class RemedyOut(_Out):
    """The remedy applied (present only when the request named one)."""

    strategy: str
    k: int | None
    guide: str | None
    guide_alpha: Number
    guide_mix: str | None
    stop: list[str]


class ModelCompletionsOut(_Out):
    model: str
    completions: list[CompletionOut]
    sent_prompt: str | None = Field(default=None, description="With a remedy: the prompt the model got.")
    sampled_from: str | None = Field(default=None, description="With a remedy: the backend sampled.")


class GenerateOut(_Out):
    results: list[ModelCompletionsOut]
    remedy: RemedyOut | None = None


class EditTokenOut(_Out):
    id: int
    text: str


class RegenerateOut(ModelCompletionsOut):
    edit_tokens: list[EditTokenOut]
    remedy: RemedyOut | None = None


class NextTokenOut(_Out):
    id: int
    text: str
    logprob: Number
    special: bool


class NextOut(_Out):
    model: str
    entropy_bits: Number
    top: list[NextTokenOut]


# --- streamed answers: the payloads of the server-sent events ---------------------------------------------


class StreamedTokenOut(TokenRecordOut):
    """A token one completion just took, as it is decoded."""

    completion: int = Field(ge=0, description="Which of the model's n completions took it.")
    finish_reason: Literal["eos", "stop", "length"] | None = Field(
        description="How the completion ended at this token; null: it goes on."
    )


class TokensOut(_Out):
    """The tokens a model's completions took at one decoding step (generate and regenerate streams)."""

    model: str
    tokens: list[StreamedTokenOut]


class QueuedOut(_Out):
    ahead: int = Field(ge=0, description="Model calls ahead of this one in the queue.")


class ModelProgressOut(_Out):
    model: str
    done: int
    total: int


class ExpandedProgressOut(_Out):
    expanded: int = Field(description="Tree nodes expanded so far.")


class OutcomeOut(_Out):
    text: str
    mass: Number = Field(description="Probability after the prompt (the lower bound when bounded).")
    mass_upper: Number
    prob: Number = Field(description="Probability within the answer set.")


class ModelDistributionOut(_Out):
    model: str
    coverage: Number
    entropy_bits: Number
    normalized_entropy: Number
    effective_outcomes: Number
    top1: str
    top1_share: Number
    chi_square: Number
    bounds: str | None
    capabilities: CapabilitiesOut
    outcomes: list[OutcomeOut]
    stats: dict[str, Number]


class ComparisonOut(_Out):
    a: str
    b: str
    kl_ab_bits: Number
    kl_ba_bits: Number
    js_bits: Number
    tv: Number
    spearman: Number


class DistributionOut(_Out):
    prompt: str
    leading_space: str
    tokenizations: str
    temperature: Number
    results: list[ModelDistributionOut]
    comparisons: list[ComparisonOut]


class TreeNodeOut(_Out):
    text: str
    prob: Number
    joint: Number
    entropy_bits: Number
    unexpanded: Number
    eos: bool
    children: list[TreeNodeOut]


class UnionNodeOut(_Out):
    """A node of the union tree: every model's values side by side (null: not comparable)."""

    text: str
    texts: list[str | None]
    probs: list[Number]
    joints: list[Number]
    entropy_bits: list[Number]
    unexpanded: list[Number]
    eos: bool
    expanded: bool
    children: list[UnionNodeOut]


class ModelTreeOut(_Out):
    model: str
    root: TreeNodeOut
    nodes_expanded: int
    seconds: Number


class MultiverseTreeOut(_Out):
    prompt: str
    prefix: str
    models: list[str]
    depth: int
    cutoff: Number
    max_nodes: int
    merge: bool
    truncated: bool
    notices: list[str]
    capabilities: dict[str, CapabilitiesOut]
    trees: list[ModelTreeOut]
    union: UnionNodeOut | None


class MultiverseOut(_Out):
    tree: MultiverseTreeOut
    size: int
    html: str = Field(description="The interactive block-multiverse page (a whole HTML document).")


class AttractorRunOut(_Out):
    kind: str
    label: str
    position: int
    inserted: str
    continuation: str
    reconvergence_tokens: int | None
    reconvergence_chars: int | None
    divergent_confidence: Number
    last_sentence_equal: bool
    edit_similarity: Number
    converged: bool
    embedding_cosine: Number


class AttractorModelOut(_Out):
    model: str
    mainline: str
    basin_share: Number
    ending_share: Number
    median_distance_tokens: Number
    capabilities: dict[str, CapabilitiesOut]
    runs: list[AttractorRunOut]
    mainline_tokens: list[TokenRecordOut]


class AttractorOut(_Out):
    results: list[AttractorModelOut]


# --- the OpenAPI document ------------------------------------------------------------------------------------

REF = "#/components/schemas/{model}"

ERROR_MEANINGS = {
    400: "The models cannot serve this request (a text the tokenizer cannot encode, a chat prompt for a model "
    "without a chat template, an answer listed twice).",
    401: "The server needs its token: header X-Modescope-Token, or Authorization: Bearer TOKEN.",
    403: "The Host header does not name this server (open it by its address, or start it with --allow-host).",
    404: "A model (or remedy guide) that is not served here.",
    413: "The request body is larger than the cap (max_body_bytes).",
    422: "A malformed body, or a value outside its bounds or over a cap (the message names the cap).",
    503: "The model worker's queue is full; try again after Retry-After seconds.",
}
MODEL_CALL_ERRORS = (400, 401, 403, 404, 413, 422, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for these error statuses, each answered with the JSON error body."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorOut, "description": ERROR_MEANINGS[status]}
        if status == 503:
            retry = {"description": "Seconds to wait.", "required": True, "schema": {"type": "string"}}
            response["headers"] = {"Retry-After": retry}
        documented[status] = response
    return documented


def _event(kind: str, payload: type[BaseModel]) -> dict[str, Any]:
    data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": REF.format(model=payload.__name__)},
    }
    return {"type": "object", "required": ["event", "data"], "properties": {"event": {"const": kind}, "data": data}}


# every payload a stream can carry: their schemas join the document's components (`openapi_document`)
STREAM_PAYLOADS: tuple[type[BaseModel], ...] = (
    QueuedOut,
    StreamErrorOut,
    ModelProgressOut,
    ExpandedProgressOut,
    TokensOut,
    DistributionOut,
    MultiverseOut,
    AttractorOut,
    GenerateOut,
    RegenerateOut,
)


def event_stream(progress: type[BaseModel], result: type[BaseModel]) -> dict[str, Any]:
    """The `openapi_extra` of a route answering with server-sent events: `queued`, `progress` events, then one
    `result` or `error`; each event's data is a JSON object (`itemSchema` describes one event, as FastAPI's own
    event streams do)."""
    kinds: dict[str, type[BaseModel]] = {
        "queued": QueuedOut,
        "progress": progress,
        "result": result,
        "error": StreamErrorOut,
    }
    item = {"oneOf": [_event(kind, payload) for kind, payload in kinds.items()]}
    return {"responses": {"200": {"content": {"text/event-stream": {"itemSchema": item}}}}}


def _link(operation: str, body: dict[str, Any], description: str) -> dict[str, Any]:
    # OpenAPI sends a link's requestBody as the whole body; schemathesis merges it into a generated one unless
    # told otherwise, and a generated body around a linked model and prompt is rarely one the models serve
    return {
        "operationId": operation,
        "requestBody": body,
        "description": description,
        "x-schemathesis": {"merge_body": False},
    }


def links(**named: dict[str, Any]) -> dict[str, Any]:
    """The `openapi_extra` declaring a route's OpenAPI links (what a client does next with its answer)."""
    return {"responses": {"200": {"links": named}}}


# A client's path through the playground: tokenize a prompt, generate from it, branch from a generated token.
TOKENIZE_LINKS = links(
    GenerateFromPrompt=_link(
        "generate",
        {"models": ["$response.body#/model"], "prompt": "$request.body#/prompt"},
        "Generate with the tokenized model from the tokenized prompt.",
    ),
    BranchAfterFirstToken=_link(
        "regenerate",
        {
            "model": "$response.body#/model",
            "prompt": "$request.body#/prompt",
            "prefix_ids": ["$response.body#/tokens/0/id"],
        },
        "Continue the prompt after the first token of the tokenized text.",
    ),
)
GENERATE_LINKS = links(
    BranchAfterFirstToken=_link(
        "regenerate",
        {
            "model": "$response.body#/results/0/model",
            "prompt": "$request.body#/prompt",
            "prefix_ids": ["$response.body#/results/0/completions/0/tokens/0/id"],
        },
        "Branch: keep the first generated token of the first model and continue from there.",
    ),
    NextAfterFirstToken=_link(
        "next",
        {
            "model": "$response.body#/results/0/model",
            "prompt": "$request.body#/prompt",
            "prefix_ids": ["$response.body#/results/0/completions/0/tokens/0/id"],
        },
        "The next-token distribution after the first generated token.",
    ),
)
REGENERATE_LINKS = links(
    BranchAgain=_link(
        "regenerate",
        {
            "model": "$response.body#/model",
            "prompt": "$request.body#/prompt",
            "prefix_ids": ["$response.body#/completions/0/tokens/0/id"],
        },
        "Branch from the first token of this branch's continuation.",
    ),
)


def _bounds(served: Sequence[str], limits: Limits, vocab_size: int | None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per request model and field, the JSON Schema keywords that state this app's served models and caps (and,
    when known, the largest vocabulary: no model here has a token id beyond it)."""
    from modescope.remedies.guided import MIXES
    from modescope.remedies.strategies import STRATEGIES
    from modescope.remedies.verbalized import MAX_K, MIN_K

    name: dict[str, Any] = {"enum": list(served)}
    fraction, fraction_open = {"minimum": 0, "maximum": 1}, {"exclusiveMinimum": 0, "maximum": 1}
    text: dict[str, Any] = {"maxLength": limits.max_prompt_chars}
    models: dict[str, Any] = {"minItems": 1, "maxItems": limits.max_models, "uniqueItems": True, "items": name}
    ids: dict[str, Any] = {"maxItems": limits.max_prefix_tokens}
    # checked before an answer starts (a stream checks its branch's ids only once it runs)
    checked_ids = ids | ({"items": {"maximum": vocab_size - 1}} if vocab_size else {})
    decoding: dict[str, dict[str, Any]] = {
        "n": {"minimum": 1, "maximum": limits.max_n},
        "max_tokens": {"minimum": 1, "maximum": limits.max_tokens},
        "top_k": {"minimum": 0, "maximum": limits.max_top_k},
        "stop": {"maxItems": limits.max_stop, "items": text},
    }
    return {
        "PromptIn": {"text": {"minLength": 1} | text, "system": text, "prefill": text},
        # the ranges `SamplerSettings` checks
        "SamplerIn": {
            "temperature": {"minimum": 0},
            "top_k": {"minimum": 0},
            "top_p": fraction_open,
            "min_p": fraction,
            "typical_p": fraction_open,
            "top_n_sigma": {"exclusiveMinimum": 0},
            "xtc_threshold": fraction,
            "xtc_probability": fraction,
        },
        "RemedyIn": {
            "strategy": {"enum": list(STRATEGIES)},
            "k": {"minimum": MIN_K, "maximum": MAX_K},
            "guide": {"enum": [*served, None]},
            "guide_alpha": {"minimum": 0, "maximum": 1},
            "guide_mix": {"enum": list(MIXES)},
        },
        "TokenizeIn": {"model": name, "text": text},
        "GenerateIn": decoding | {"models": models},
        "RegenerateIn": decoding | {"model": name, "prefix_ids": checked_ids, "edit": text},
        "NextIn": {"model": name, "prefix_ids": checked_ids, "top_k": {"minimum": 1, "maximum": limits.max_top_k}},
        "DistributionIn": {
            "models": models,
            "choices": {
                "minItems": 1,
                "maxItems": limits.max_candidates,
                "uniqueItems": True,
                "items": {"minLength": 1} | text,
            },
        },
        "MultiverseIn": {
            "models": models,
            "prefix": text,
            "prefix_paths": {"items": ids},
            "depth": {"minimum": 1, "maximum": limits.max_depth},
            "cutoff": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "max_nodes": {"minimum": 1, "maximum": limits.max_nodes},
        },
        "AttractorIn": {
            "models": models,
            "max_tokens": {"minimum": 2, "maximum": limits.max_attractor_tokens},
            "detour_tokens": {"minimum": 1, "maximum": limits.max_tokens},
        },
    }


def _one_of(*fields: tuple[str, str]) -> dict[str, Any]:
    """Exactly one of these (field, JSON type) pairs is given (null counts as not given)."""
    return {"oneOf": [{"required": [name], "properties": {name: {"type": kind}}} for name, kind in fields]}


# Rules across fields that the routes enforce (422), stated in the request schemas.
CROSS_FIELD_RULES: dict[str, dict[str, Any]] = {
    # system and prefill need chat: true
    "PromptIn": {
        "anyOf": [
            {"required": ["chat"], "properties": {"chat": {"const": True}}},
            {"properties": {"system": {"type": "null"}, "prefill": {"maxLength": 0}}},
        ]
    },
    "TokenizeIn": _one_of(("prompt", "object"), ("text", "string")),
    "DistributionIn": _one_of(("integers", "array"), ("choices", "array")),
}


def _merge(schema: dict[str, Any], keywords: dict[str, Any]) -> None:
    for key, value in keywords.items():
        if isinstance(value, dict) and isinstance(schema.get(key), dict):
            _merge(schema[key], value)
        else:
            schema[key] = value


def openapi_document(
    document: dict[str, Any], served: Sequence[str], limits: Limits, vocab_size: int | None = None
) -> dict[str, Any]:
    """FastAPI's OpenAPI `document` with what only this app knows: the stream payloads' schemas (referenced by
    `event_stream`), the served model names, the caps as bounds of the request fields, and the largest
    vocabulary of the served models when every one is loaded."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    _, streamed = models_json_schema([(m, "serialization") for m in STREAM_PAYLOADS], ref_template=REF)
    components.update(streamed["$defs"])
    for model, rules in CROSS_FIELD_RULES.items():
        components[model].update(rules)
    for model, fields in _bounds(served, limits, vocab_size).items():
        properties = components[model]["properties"]
        for field, keywords in fields.items():
            _merge(properties[field], keywords)
    return document


def route_docs(
    operation: str,
    answer: type[BaseModel],
    extra: dict[str, Any] | None = None,
    errors: Sequence[int] = MODEL_CALL_ERRORS,
) -> dict[str, Any]:
    """The OpenAPI keyword arguments of a JSON route: its operation id, answer model, error answers and extras
    (the route still builds its own answer: the model documents it, FastAPI does not re-validate it)."""
    return {
        "operation_id": operation,
        "response_model": answer,
        "responses": error_responses(*errors),
        "openapi_extra": extra,
    }


def stream_docs(operation: str, progress: type[BaseModel], result: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI keyword arguments of a route answering with server-sent events (see `event_stream`)."""
    from fastapi.responses import StreamingResponse

    # a response class without a media type of its own leaves the 200 content to `event_stream`
    return {
        "operation_id": operation,
        "response_class": StreamingResponse,
        "responses": error_responses(*MODEL_CALL_ERRORS),
        "openapi_extra": event_stream(progress, result),
    }
