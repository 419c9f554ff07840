"""Command-line options for models behind an OpenAI-compatible server (`NAME@URL`), shared by every command
that loads models (the analysis commands, `serve` and `run`).

Only typer is imported at the top, so the commands that use these options still start fast; the model layer
(which brings torch) is imported when the options are resolved, just before models load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from modescope.errors import ModescopeError

PANEL = "Models behind a server (NAME@URL)"
DEFAULT_CONCURRENCY = 8  # what `modescope.models.load` uses when --max-concurrency is not given

Tokenizer = Annotated[
    list[str] | None,
    typer.Option(
        "--tokenizer",
        metavar="[MODEL=]TOK",
        help="Tokenizer (preset, folder or cached HF id) of models behind a server whose NAME is not one: TOK for "
        "every NAME@URL model, or NAME@URL=TOK for one; repeat.",
        rich_help_panel=PANEL,
    ),
]
MaxConcurrency = Annotated[
    int | None,
    typer.Option(
        metavar="INT",
        help=f"Requests in flight per server model (default {DEFAULT_CONCURRENCY}).",
        rich_help_panel=PANEL,
        show_default=False,
    ),
]
MaxLogprobs = Annotated[
    int | None,
    typer.Option(
        metavar="INT",
        help="Most alternatives asked for per position (a full server becomes top-k; 0 leaves sampling only) "
        "(default: as many as the server shows).",
        rich_help_panel=PANEL,
        show_default=False,
    ),
]


@dataclass(frozen=True)
class ServerOptions:
    """The server options of one command, checked against the models it loads.

    `tokenizer` applies to every NAME@URL model, `tokenizers` to one each (keyed by the full NAME@URL spec);
    None means not given, so `load` (or a suite's model entry) keeps its own setting."""

    tokenizer: str | None = None
    tokenizers: dict[str, str] = field(default_factory=dict)
    max_concurrency: int | None = None
    max_logprobs: int | None = None

    @classmethod
    def resolve(
        cls,
        tokenizer: Sequence[str] | None,
        max_concurrency: int | None,
        max_logprobs: int | None,
        models: Sequence[str],
    ) -> ServerOptions:
        """Parse and check the options for a command that loads `models` (the names given to `load`).

        Refuses, with one line each: --max-concurrency below 1, --max-logprobs below 0, a malformed
        --tokenizer, two TOKs for all models, a MODEL=TOK whose MODEL is not a NAME@URL model of the command,
        and any of the options when no model of the command is behind a server."""
        from modescope.models.remote import is_remote

        if max_concurrency is not None and max_concurrency < 1:
            raise ModescopeError(f"--max-concurrency must be at least 1 (got {max_concurrency})")
        if max_logprobs is not None and max_logprobs < 0:
            raise ModescopeError(f"--max-logprobs must be 0 or more (got {max_logprobs})")
        shared: str | None = None
        per_model: dict[str, str] = {}
        for value in tokenizer or []:
            model, equals, name = value.partition("=")
            if not value or (equals and (not model or not name)):
                raise ModescopeError(
                    f"--tokenizer '{value}' is malformed: give TOK, or MODEL=TOK with MODEL a NAME@URL model "
                    "of this command and TOK a preset, folder or cached Hugging Face id"
                )
            if equals and (model in models or is_remote(model)):
                if model not in models:
                    raise ModescopeError(f"--tokenizer names '{model}', which this command does not load")
                if not is_remote(model):
                    raise ModescopeError(
                        f"--tokenizer is for models behind a server (NAME@URL); '{model}' brings its own"
                    )
                if model in per_model:
                    raise ModescopeError(f"--tokenizer is given twice for '{model}'; give it once")
                per_model[model] = name
                continue
            if shared is not None:  # a folder may contain '=', so anything else is one TOK for every model
                raise ModescopeError(
                    f"--tokenizer is given twice for every model ('{shared}' and '{value}'); give TOK once, or "
                    "NAME@URL=TOK per model"
                )
            shared = value
        options = cls(shared, per_model, max_concurrency, max_logprobs)
        if options.given and not any(is_remote(m) for m in models):
            flags = {
                "--tokenizer": bool(tokenizer),
                "--max-concurrency": max_concurrency is not None,
                "--max-logprobs": max_logprobs is not None,
            }
            used = [flag for flag, given in flags.items() if given]
            raise ModescopeError(
                f"{' and '.join(used)} {'is' if len(used) == 1 else 'are'} for models behind a server "
                f"(NAME@URL), and none of {', '.join(models) or 'the models'} is"
            )
        return options

    @property
    def given(self) -> bool:
        return bool(self.tokenizer or self.tokenizers) or (self.max_concurrency, self.max_logprobs) != (None, None)

    def for_model(self, name: str) -> dict[str, Any]:
        """The given settings for one model, as keyword arguments of `modescope.models.load`: only for a
        NAME@URL model (in-process models take none)."""
        from modescope.models.remote import is_remote

        if not is_remote(name):
            return {}
        settings = {
            "tokenizer": self.tokenizers.get(name, self.tokenizer),
            "max_concurrency": self.max_concurrency,
            "max_logprobs": self.max_logprobs,
        }
        return {key: value for key, value in settings.items() if value is not None}
