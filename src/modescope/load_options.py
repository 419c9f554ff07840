"""Command-line options that let a model's files run code when it loads (`--trust-remote-code`,
`--allow-pickle`), shared by every command that loads models; both off by default (see models/safety.py).

Only typer is imported at the top, so the commands that use these options still start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modescope.models.safety import LoadPolicy

PANEL = "Untrusted model files"

TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let a model (or tokenizer) run the Python code shipped with its files (config auto_map). "
        "Only for sources you trust.",
        rich_help_panel=PANEL,
    ),
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Read weights and adapters stored as pickle (.bin, .pt, .pth, .ckpt, .pkl), which can run code when "
        "read; default: safetensors only. Only for sources you trust.",
        rich_help_panel=PANEL,
    ),
]


def load_policy(trust_remote_code: bool, allow_pickle: bool) -> LoadPolicy:
    """The policy the two options describe, for the loaders."""
    from modescope.models.safety import LoadPolicy

    return LoadPolicy(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
