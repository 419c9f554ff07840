"""Models behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, hosted APIs): `NAME@BASE_URL`.

The server computes; modescope keeps the model's tokenizer locally, sends token ids and reads back
log-probabilities, so remote and in-process models score the same tokens. What the server shows decides
the capability tier (see `Capabilities`), detected when the backend connects:

- full: `logprobs=-1` returns the whole next-token distribution (vLLM started with `--max-logprobs -1`);
- top-k: only the k most likely tokens per position (OpenAI: 5 in completions, 20 in chat; vLLM's default 20);
- sample-only: a chat endpoint without log-probabilities.

Independent requests go out concurrently (up to `max_concurrency`) so the server's continuous batching is
used; failed requests are retried with backoff on 429, 5xx and dropped connections. The API key comes from
MODESCOPE_API_KEY or OPENAI_API_KEY and is only ever put in the Authorization header.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modescope.errors import ModescopeError
from modescope.models.base import Answer, Backend, Capabilities, ChatPrompt, ServerCompletion, ServerToken, Tier
from modescope.models.vocab import Vocabulary, vocabulary_from_tokenizer

REMOTE_NAME = re.compile(r"^(?P<name>[^@\s]+)@(?P<url>https?://\S+)$")
HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # organization/name, e.g. Qwen/Qwen2.5-0.5B-Instruct
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
TOKENIZER_PROBE = "Q: 42, 7.5 or 100?\nA:  café – naïve {x}"
FULL_PER_REQUEST = 4  # whole distributions per request: each is ~1.8 MB of JSON for a 49k vocabulary
SCORED_PER_REQUEST = 32  # scored or top-k sequences per request (small answers)
ENTROPY_ALTERNATIVES = 20  # alternatives asked for per sampled token, to bound its entropy


def is_remote(name: str) -> bool:
    """Whether a model name is `NAME@http(s)://...`."""
    return REMOTE_NAME.match(name) is not None


def split_remote(name: str) -> tuple[str, str]:
    """(served model name, base URL without a trailing slash) of `NAME@BASE_URL`."""
    match = REMOTE_NAME.match(name)
    if match is None:
        raise ModescopeError(f"'{name}' is not NAME@URL; write the served model name, @, then the base URL")
    if "@" in match["url"].split("/")[2]:
        raise ModescopeError("the server URL holds credentials (user:key@host); put the key in MODESCOPE_API_KEY")
    return match["name"], match["url"].rstrip("/")


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach and read a server. `tokenizer`: a preset, folder or cached HF id whose tokenizer the
    server's model uses (default: NAME itself). `max_logprobs` caps the alternatives asked for per position
    (a top-k tier on any server; 0 leaves sampling only)."""

    tokenizer: str | None = None
    max_concurrency: int = 8
    max_logprobs: int | None = None
    timeout: float = 300.0
    retries: int = 4
    trust_remote_code: bool = False  # the tokenizer may run Python code it ships (see models/safety.py)

    def check(self) -> None:
        if self.max_concurrency < 1:
            raise ModescopeError(f"--max-concurrency must be at least 1 (got {self.max_concurrency})")
        if self.max_logprobs is not None and self.max_logprobs < 0:
            raise ModescopeError(f"--max-logprobs must be 0 or more (got {self.max_logprobs})")


class ServerError(ModescopeError):
    """A server that could not be reached or gave an unusable answer."""


def api_key() -> str | None:
    """MODESCOPE_API_KEY, else OPENAI_API_KEY, without surrounding whitespace (a pasted newline)."""
    for variable in ("MODESCOPE_API_KEY", "OPENAI_API_KEY"):
        key = os.environ.get(variable, "").strip()
        if key:
            if not key.isprintable() or not key.isascii():
                raise ModescopeError(f"{variable} holds characters a key cannot have; set it to the key alone")
            return key
    return None


class Client:
    """A small JSON client for one server: timeouts, bounded retries with backoff, concurrency limit."""

    def __init__(self, base_url: str, options: RemoteOptions, label: str) -> None:
        import httpx

        self.base_url = base_url
        self.label = label  # NAME@URL, for messages
        self.options = options
        headers = {"Authorization": f"Bearer {key}"} if (key := api_key()) else {}
        limits = httpx.Limits(
            max_connections=options.max_concurrency, max_keepalive_connections=options.max_concurrency
        )
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(options.timeout, connect=10.0), limits=limits)
        self.pool = ThreadPoolExecutor(max_workers=options.max_concurrency, thread_name_prefix="modescope-remote")
        self.requests = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # per worker thread: the abort flag of the map it serves

    def url(self, path: str) -> str:
        if path.startswith("/"):  # relative to the server root (vLLM's /tokenize), not to the /v1 base
            root = re.sub(r"/v\d+$", "", self.base_url)
            return root + path
        return f"{self.base_url}/{path}"

    def request(self, method: str, path: str, body: Any = None, retries: int | None = None) -> Any:
        """One JSON request; retried on 429, 5xx, timeouts and dropped connections. Returns the parsed JSON."""
        import httpx

        attempts = (self.options.retries if retries is None else retries) + 1
        payload = json.dumps(body).encode() if body is not None else None
        last = ""
        wait = 0.0
        abort: threading.Event | None = getattr(self._local, "abort", None)
        for attempt in range(attempts):
            if attempt:
                time.sleep(wait)
            if abort is not None and abort.is_set():
                raise Cancelled(f"{self.label}: cancelled after another request failed")
            wait = min(0.25 * 2 ** (attempt + 1), 8.0)  # before the next attempt, unless the server says
            try:
                response = self.http.request(
                    method, self.url(path), content=payload, headers={"Content-Type": "application/json"}
                )
            except httpx.TimeoutException:
                last = f"no answer within {self.options.timeout:g} s: the server may be overloaded"
                continue
            except httpx.TransportError as exc:
                last = _transport_problem(exc)
                continue
            with self._lock:
                self.requests += 1
                self.bytes_received += len(response.content)
                self.bytes_sent += len(payload or b"")
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}{_server_message(response)}"
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():
                    wait = min(float(retry_after), 30.0)
                continue
            if response.status_code in (401, 403):
                raise ServerError(
                    f"{self.label} refused the request (HTTP {response.status_code}): set MODESCOPE_API_KEY "
                    "(or OPENAI_API_KEY) to a key this server accepts"
                )
            if response.status_code >= 400:
                raise HTTPStatus(response.status_code, _server_message(response).lstrip(": "), path)
            try:
                return response.json()
            except ValueError:
                raise ServerError(
                    f"{self.label} answered {path} with malformed JSON ({response.content[:60]!r}); "
                    "check that the URL points at an OpenAI-compatible API (it usually ends in /v1)"
                ) from None
        raise ServerError(
            f"{self.label}: {method} {self.url(path)} failed after {attempts} attempts ({last}); "
            "check that the server is up"
        )

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`function` over items, up to max_concurrency at once, results in order. The first error wins,
        and the requests still in flight stop retrying."""
        if len(items) <= 1:
            return [function(item) for item in items]
        abort = threading.Event()

        def run(item: Any) -> Any:
            self._local.abort = abort
            try:
                return function(item)
            except BaseException:
                abort.set()
                raise
            finally:
                self._local.abort = None

        futures = [self.pool.submit(run, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [e for f in futures if f.done() and not f.cancelled() and (e := f.exception()) is not None]
        if failed:
            for future in futures:
                future.cancel()
            wait(futures)  # the requests in flight see the abort flag at their next attempt
            causes = [e for e in failed if not isinstance(e, Cancelled)]
            raise (causes or failed)[0]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


class Cancelled(ServerError):
    """A request given up because another request of the same batch failed for good."""


class HTTPStatus(ServerError):
    """A 4xx answer other than 401/403: the request itself was refused."""

    def __init__(self, status: int, message: str, path: str) -> None:
        super().__init__(f"HTTP {status} from {path}: {message}")
        self.status = status
        self.message = message


def _transport_problem(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "the connection dropped"
    return type(exc).__name__


def _server_message(response: Any) -> str:
    """The server's own error text, one line and short (never the request: it carries the key)."""
    try:
        data = response.json()
    except ValueError:
        return ""
    message = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(message, dict):
        message = message.get("message", "")
    if not isinstance(message, str):
        message = data.get("message", "") if isinstance(data, dict) else ""
    text = " ".join(str(message).split())
    return f": {text[:300]}" if text else ""


def _token_id(key: str) -> int:
    """The id in a "token_id:N" key (return_tokens_as_token_ids), or a plain id."""
    return int(key[9:]) if key.startswith("token_id:") else int(key)


class RemoteBackend(Backend):
    """A model served by an OpenAI-compatible server, with its tokenizer held locally."""

    samples_on_server = True

    def __init__(self, spec: str, tokenizer: Any, vocab: Vocabulary, client: Client, max_context: int) -> None:
        super().__init__(spec, vocab, max_context)
        self.served, self.base_url = split_remote(spec)
        self.tokenizer = tokenizer
        self.client = client
        self.source = spec
        self.capabilities = Capabilities()
        # chat-only servers get messages: the prompt ids each rendered chat prompt stands for
        self._messages: dict[tuple[int, ...], list[dict[str, str]]] = {}

    # --- text -------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        from modescope.models.hf import tokenizer_encode

        return tokenizer_encode(self.tokenizer, text, add_special_tokens)

    def token_text(self, token_id: int) -> str:
        from modescope.models.hf import special_name

        return special_name(self.tokenizer, self.vocab, token_id) or super().token_text(token_id)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None)) or self.capabilities.chat_only

    def render_chat(self, prompt: ChatPrompt) -> str:
        from modescope.models.hf import render_chat_template

        if getattr(self.tokenizer, "chat_template", None):
            return render_chat_template(self.tokenizer, prompt)
        return super().render_chat(prompt)

    def prompt_ids(self, prompt: str | ChatPrompt) -> list[int]:
        if not self.capabilities.chat_only:
            return super().prompt_ids(prompt)
        from modescope.models.hf import chat_messages

        if isinstance(prompt, str) and self.chat_style is not None:
            prompt = ChatPrompt(prompt, self.chat_style.system, self.chat_style.prefill)
        if not isinstance(prompt, ChatPrompt):
            raise ModescopeError(
                f"'{self.name}' only offers chat completions, so it cannot continue plain text; use --chat"
            )
        if prompt.prefill:
            raise ModescopeError(
                f"'{self.name}' only offers chat completions, which cannot start the reply; drop --prefill"
            )
        ids = self.encode(self.render_chat(prompt), add_special_tokens=False) if self.tokenizer else []
        key = (*ids, -(len(self._messages) + 1))  # a unique key even without a local template
        self._messages[key] = chat_messages(prompt)
        return list(key)

    def fingerprint(self) -> str | None:
        return None  # the model behind a name can change on the server: never cache across processes

    def close(self) -> None:
        """Close the HTTP connections and the request threads."""
        self.client.close()

    # --- requests ---------------------------------------------------------------------------------------
    def _completions(self, prompts: Sequence[Sequence[int]], **params: Any) -> list[dict[str, Any]]:
        """One /completions request for several token-id prompts; the choices in prompt order."""
        body = {"model": self.served, "prompt": [list(p) for p in prompts], "return_tokens_as_token_ids": True}
        data = self.client.request("POST", "completions", body | params)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or len(choices) != len(prompts) * int(params.get("n", 1)):
            raise ServerError(
                f"{self.name}: the server's answer has no usable 'choices'; is this an OpenAI-compatible API?"
            )
        return sorted(choices, key=lambda c: int(c.get("index", 0)))

    def query(self, sequences: Sequence[Sequence[int]], top: int | None, score: bool) -> list[Answer]:
        """For each sequence: with `score`, the log-probability of every token after the first; and the
        next-token alternatives: `top=None` the whole distribution, `top=k` the k best, `top=0` none.
        Sequences go several to a request, requests concurrently."""
        if top is None:
            self.capabilities.require("a whole next-token distribution", self.name)
        elif top > 0:
            self.capabilities.require("token log-probabilities", self.name, "top-k")
            top = min(top, self.capabilities.top_k or top)
        if score and not self.capabilities.scores_sequences:
            raise ModescopeError(f"'{self.name}' cannot score given tokens (no prompt_logprobs on this server)")
        for sequence in sequences:
            self.check_length(len(sequence) + 1)
        per_request = FULL_PER_REQUEST if top is None else SCORED_PER_REQUEST
        groups = [sequences[i : i + per_request] for i in range(0, len(sequences), per_request)]
        params: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0}
        if top != 0:
            params["logprobs"] = -1 if top is None else top
        if score:
            params["prompt_logprobs"] = 0

        def ask(group: Sequence[Sequence[int]]) -> list[Answer]:
            choices = self._completions(group, **params)
            return [self._answer(choice, seq, top, score) for choice, seq in zip(choices, group, strict=True)]

        answers = [a for part in self.client.map(ask, groups) for a in part]
        self.stats.tokens += sum(len(s) for s in sequences)
        self.stats.calls += len(groups)
        return answers

    def _answer(self, choice: dict[str, Any], sequence: Sequence[int], top: int | None, score: bool) -> Answer:
        scores = None
        if score:
            rows = choice.get("prompt_logprobs")
            if not isinstance(rows, list) or len(rows) != len(sequence):
                raise ServerError(f"{self.name}: the server returned no prompt_logprobs for a scored sequence")
            scores = [_logprob_of(rows[i], token) for i, token in enumerate(sequence) if i > 0]
        ids = values = None
        if top != 0:
            shown = (choice.get("logprobs") or {}).get("top_logprobs") or []
            if not shown or not isinstance(shown[0], dict):
                raise ServerError(f"{self.name}: the server returned no top_logprobs; it may not support logprobs")
            ids, values = _shown(shown[0], self.vocab.size, self.name)
        return Answer(scores, ids, values)

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
        """Whole next-token distributions (full tier). A top-k server answers only inside
        `partial_distributions`, with the shown tokens and every other entry -inf."""
        if self.capabilities.tier == "full":
            answers = self.query(prefixes, None, False)
        elif self.partial_ok:
            answers = self.query(prefixes, self.capabilities.top_k, False)
        else:
            self.capabilities.require("this probe", self.name)
            raise AssertionError("unreachable")
        result = torch.full((len(prefixes), self.vocab.size), -math.inf, dtype=torch.float64)
        for row, answer in enumerate(answers):
            assert answer.shown_ids is not None and answer.shown_logprobs is not None
            result[row, answer.shown_ids] = answer.shown_logprobs
        if self.capabilities.tier == "full":
            # the server's float32 log-softmax sums to 1 within ~1e-6; renormalize in float64
            result -= torch.logsumexp(result, dim=-1, keepdim=True)
        return result

    # --- sampling ---------------------------------------------------------------------------------------
    def sample_on_server(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        max_tokens: int,
        params: dict[str, float | int],
        alternatives: int,
        seed: int | None,
        stop: Sequence[str],
    ) -> list[list[ServerCompletion]]:
        shown = self.server_alternatives(alternatives)
        for prompt in prompts:
            self.check_length(len(prompt) + max_tokens)
        # greedy rows are all the same, and vLLM refuses n > 1 without sampling: ask once, copy
        copies, n = (n, 1) if params.get("temperature") == 0.0 else (1, n)
        options: dict[str, Any] = {"n": n, "max_tokens": max_tokens, **params}
        if seed is not None:
            options["seed"] = seed
        if stop:
            options["stop"] = list(stop)
        if self.capabilities.chat_only:
            answers = self.client.map(lambda p: self._chat_samples(p, options, shown), list(prompts))
            return [group * copies for group in answers]
        options |= {"include_stop_str_in_output": True, "skip_special_tokens": False, "return_token_ids": True}
        if shown:
            options["logprobs"] = shown

        def ask(prompt: Sequence[int]) -> list[ServerCompletion]:
            choices = self._completions([prompt], **options)
            return [self._completion(choice) for choice in choices]

        completions = self.client.map(ask, list(prompts))
        self.stats.calls += len(prompts)
        return [[copy.deepcopy(c) for c in group for _ in range(copies)] for group in completions]

    def server_alternatives(self, alternatives: int) -> int:
        """Alternatives asked for per sampled token: enough to bound its entropy, within the server's cap."""
        if self.capabilities.tier == "sample-only":
            return 0
        wanted = max(alternatives, ENTROPY_ALTERNATIVES)
        return min(wanted, self.capabilities.top_k or wanted, 20 if self.capabilities.chat_only else wanted)

    def _completion(self, choice: dict[str, Any]) -> ServerCompletion:
        logprobs = choice.get("logprobs") or {}
        keys = logprobs.get("tokens")
        if keys is None:  # sample-only: the ids come from return_token_ids, else from tokenizing the text
            ids = choice.get("token_ids")
            if not isinstance(ids, list):
                ids = self.encode(str(choice.get("text", "")), add_special_tokens=False)
            tokens = [ServerToken(int(i), math.nan) for i in ids]
        else:
            values = logprobs.get("token_logprobs") or [math.nan] * len(keys)
            tops = logprobs.get("top_logprobs") or [None] * len(keys)
            tokens = []
            for key, value, top in zip(keys, values, tops, strict=True):
                alternatives: list[tuple[int, float]] = []
                if isinstance(top, dict):
                    top_ids, shown = _shown(top, self.vocab.size, self.name)
                    alternatives = list(zip(top_ids.tolist(), shown.tolist(), strict=True))
                tokens.append(ServerToken(_token_id(key), math.nan if value is None else float(value), alternatives))
        return ServerCompletion(tokens, self._finish_reason(choice, tokens))

    def _finish_reason(self, choice: dict[str, Any], tokens: list[ServerToken]) -> str:
        reason, stop_reason = choice.get("finish_reason"), choice.get("stop_reason")
        if reason == "length":
            return "length"
        if isinstance(stop_reason, str):
            return "stop"
        if tokens and tokens[-1].id in self.vocab.eos_ids:
            return "eos"
        return "eos" if reason == "stop" else str(reason or "length")

    def _chat_samples(self, prompt: Sequence[int], options: dict[str, Any], shown: int) -> list[ServerCompletion]:
        messages = self._messages.get(tuple(prompt))
        if messages is None:
            raise ModescopeError(
                f"'{self.name}' only offers chat completions: it can answer a chat prompt, not continue given "
                "tokens (attractor and forks experiments need /v1/completions)"
            )
        body = {"model": self.served, "messages": messages, **options}
        if "max_tokens" in body:
            body["max_completion_tokens"] = body["max_tokens"]
        if shown:
            body |= {"logprobs": True, "top_logprobs": shown}
        data = self.client.request("POST", "chat/completions", body)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list):
            raise ServerError(f"{self.name}: the chat answer has no 'choices'")
        return [self._chat_completion(c) for c in sorted(choices, key=lambda c: int(c.get("index", 0)))]

    def _chat_completion(self, choice: dict[str, Any]) -> ServerCompletion:
        content = (choice.get("logprobs") or {}).get("content")
        if not content:
            text = str((choice.get("message") or {}).get("content") or "")
            tokens = [ServerToken(i, math.nan) for i in self.encode(text, add_special_tokens=False)]
        else:
            tokens = [
                ServerToken(
                    self._chat_token(item),
                    float(item.get("logprob", math.nan)),
                    [(self._chat_token(t), float(t["logprob"])) for t in item.get("top_logprobs") or []],
                )
                for item in content
            ]
        return ServerCompletion(tokens, "length" if choice.get("finish_reason") == "length" else "eos")

    def _chat_token(self, item: dict[str, Any]) -> int:
        """A chat answer names tokens by text (or token_id:N on vLLM): find the id in the local vocabulary."""
        token = str(item.get("token", ""))
        if token.startswith("token_id:") and token[9:].isdigit():
            return _token_id(token)
        data = bytes(item["bytes"]) if isinstance(item.get("bytes"), list) else token.encode()
        ids = self.vocab.ids_with_bytes(data)
        return ids[0] if ids else -1


def _logprob_of(row: Any, token: int) -> float:
    """The log-probability of `token` in one prompt_logprobs entry ({"id": {"logprob": x, ...}})."""
    if not isinstance(row, dict):
        raise ServerError("the server returned a prompt_logprobs entry that is not an object")
    for key, value in row.items():
        if _token_id(key) == token:
            return float(value["logprob"] if isinstance(value, dict) else value)
    raise ServerError(f"prompt_logprobs does not list the given token {token}")


def _shown(top: dict[str, Any], vocab_size: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and float64 log-probabilities of a top_logprobs object, best first, checked against the vocabulary."""
    try:  # "token_id:N" keys (return_tokens_as_token_ids), or plain ids
        ids = torch.tensor([_token_id(k) for k in top], dtype=torch.long)
    except ValueError:
        raise ServerError(
            f"{name}: the server names tokens by text, not id; it needs return_tokens_as_token_ids (vLLM does)"
        ) from None
    values = torch.tensor([float(v) for v in top.values()], dtype=torch.float64)
    inside = ids < vocab_size
    if not bool(inside.all()):
        # logits padded beyond the tokenizer: those ids are never produced; their mass must be ~0
        outside = values[~inside]
        if outside.numel() and float(outside.exp().sum()) > 1e-6:
            raise ModescopeError(
                f"the server gives mass to token ids beyond the local vocabulary of {vocab_size}; "
                "the local tokenizer does not match the server's model: give --tokenizer"
            )
        ids, values = ids[inside], values[inside]
    values = torch.nan_to_num(values, neginf=-math.inf)
    order = torch.argsort(values, descending=True)
    return ids[order], values[order]


# --- connecting -------------------------------------------------------------------------------------------


def _resolve_tokenizer(name: str, options: RemoteOptions) -> tuple[Any, Vocabulary]:
    """The tokenizer and byte table for a served model: --tokenizer, else the served NAME itself."""
    from modescope.models import PRESETS, preset_folder
    from modescope.models.hf import load_tokenizer
    from modescope.models.safety import RefusedModel

    source = options.tokenizer or name
    if source in PRESETS:
        folder = preset_folder(PRESETS[source])
    elif Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
    elif HF_ID.match(source):
        folder = Path(source)  # a Hugging Face id: loaded from the local cache only
    else:
        hint = "" if options.tokenizer else f"'{name}' is not a preset, a folder or a Hugging Face id, so "
        raise ModescopeError(
            f"{hint}no tokenizer for '{source}': give --tokenizer (a preset, a folder or a cached Hugging Face "
            "id whose tokenizer the served model uses)"
        )
    try:
        tokenizer, vocab = load_tokenizer(str(folder), source, options.trust_remote_code)
    except RefusedModel:
        raise  # it names the option that lets it load: a generic hint would hide that
    except ModescopeError:
        raise ModescopeError(
            f"cannot load the tokenizer '{source}' for the served model '{name}': give --tokenizer (a preset, "
            "a folder or a Hugging Face id in the local cache)"
        ) from None
    return tokenizer, vocab or vocabulary_from_tokenizer(tokenizer)


def _served_models(client: Client, name: str) -> dict[str, Any]:
    """The server's /models entry for NAME; a clear error when it does not serve that name."""
    try:
        data = client.request("GET", "models", retries=1)
    except HTTPStatus as exc:
        raise ServerError(
            f"{client.label}: GET /models answered HTTP {exc.status}; check that the URL is the API base "
            "(for vLLM: http://HOST:PORT/v1)"
        ) from None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ServerError(
            f"{client.label}: /models did not list models; check that the URL is an OpenAI-compatible API"
        )
    served = {str(e.get("id")): e for e in entries if isinstance(e, dict)}
    if name not in served:
        listing = ", ".join(sorted(served)) or "nothing"
        raise ModescopeError(f"the server at {client.base_url} does not serve '{name}'; it serves: {listing}")
    return served[name]


def _detect(backend: RemoteBackend, options: RemoteOptions) -> Capabilities:
    """Find out what the server shows: whole distributions, the top k, or nothing; and whether it scores
    given tokens. One tiny request per question."""
    probe = backend.encode("Hello", add_special_tokens=True)
    cap = options.max_logprobs
    server = backend.name
    backend.capabilities = Capabilities("full", None, True, False, server)  # let query() ask anything
    try:
        backend._completions([probe], max_tokens=1, temperature=0.0)
    except HTTPStatus as exc:
        if exc.status not in (404, 405):
            raise
        # no /completions: a chat-only API (a provider, or a server started for chat)
        shown = _chat_logprobs(backend, min(cap, 20) if cap is not None else 20) if cap != 0 else 0
        return Capabilities("top-k" if shown else "sample-only", shown or None, False, True, server)
    tier, top = _completions_tier(backend, probe, cap)
    scores = tier != "sample-only" and _scores_sequences(backend, probe)
    return Capabilities(tier, top, scores, False, server)


def _completions_tier(backend: RemoteBackend, probe: list[int], cap: int | None) -> tuple[Tier, int | None]:
    """Ask for the whole distribution (or the cap), then fewer alternatives until the server agrees."""
    if cap == 0:
        return "sample-only", None
    first = [-1] if cap is None else [cap]
    for ask in first + [k for k in (20, 5, 1) if cap is None or k < cap]:
        try:
            choices = backend._completions([probe], max_tokens=1, temperature=0.0, logprobs=ask)
        except HTTPStatus:
            continue  # the server refuses this many alternatives: try fewer
        shown = ((choices[0].get("logprobs") or {}).get("top_logprobs") or [None])[0]
        if not isinstance(shown, dict) or not shown:
            continue
        ids, _ = _shown(shown, backend.vocab.size, backend.name)
        if ask == -1 and 1000 < len(shown) < backend.vocab.size * 0.99:
            raise ModescopeError(
                f"the server's model has a vocabulary of {len(shown)} tokens but the local tokenizer has "
                f"{backend.vocab.size}: they do not match; give --tokenizer with the served model's tokenizer"
            )
        if ask == -1 and len(shown) >= backend.vocab.size * 0.99:
            return "full", None
        return "top-k", min(len(ids), ask) if ask > 0 else len(ids)
    return "sample-only", None


def _scores_sequences(backend: RemoteBackend, probe: list[int]) -> bool:
    try:
        choices = backend._completions([probe], max_tokens=1, temperature=0.0, prompt_logprobs=0)
    except HTTPStatus:
        return False
    rows = choices[0].get("prompt_logprobs")
    return isinstance(rows, list) and len(rows) == len(probe)


def _chat_logprobs(backend: RemoteBackend, wanted: int) -> int:
    """How many alternatives a chat endpoint shows per token when asked for `wanted` (0: none)."""
    body = {
        "model": backend.served,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": wanted,
    }
    try:
        data = backend.client.request("POST", "chat/completions", body)
    except HTTPStatus:
        return 0
    choice = (data.get("choices") or [{}])[0] if isinstance(data, dict) else {}
    content = (choice.get("logprobs") or {}).get("content")
    return wanted if content else 0


def _check_tokenizer(backend: RemoteBackend) -> None:
    """Refuse a local tokenizer that does not match the server's: compare /tokenize on a probe string."""
    body = {"model": backend.served, "prompt": TOKENIZER_PROBE, "add_special_tokens": False}
    try:
        data = backend.client.request("POST", "/tokenize", body, retries=1)
    except (HTTPStatus, ServerError):
        return  # no /tokenize (not vLLM): the vocabulary check on the first answers still applies
    server_ids = data.get("tokens") if isinstance(data, dict) else None
    local = backend.encode(TOKENIZER_PROBE, add_special_tokens=False)
    if isinstance(server_ids, list) and server_ids != local:
        raise ModescopeError(
            f"the local tokenizer does not match the server's for '{backend.name}' (they split a probe string "
            f"into {len(local)} and {len(server_ids)} tokens); give --tokenizer with the served model's tokenizer"
        )


def connect(spec: str, options: RemoteOptions | None = None) -> RemoteBackend:
    """Connect to `NAME@BASE_URL`: check the server serves NAME, load the tokenizer, check it matches the
    server's, and detect the capability tier."""
    options = options or RemoteOptions()
    options.check()
    name, base_url = split_remote(spec)
    client = Client(base_url, options, spec)
    try:
        entry = _served_models(client, name)
        tokenizer, vocab = _resolve_tokenizer(name, options)
        context = int(entry.get("max_model_len") or 0) or 1 << 30
        backend = RemoteBackend(spec, tokenizer, vocab, client, context)
        _check_tokenizer(backend)
        backend.capabilities = _detect(backend, options)
    except BaseException:
        client.close()
        raise
    return backend
