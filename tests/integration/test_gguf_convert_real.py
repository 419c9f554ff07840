"""The one-pass conversion of the real SmolLM2 GGUF equals transformers' own, file for file and tensor for
tensor, and loads alike. (Gemma 3 270M takes ~60 s by transformers' path, so benchmarks/bench_convert.py
checks it instead.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modescope.models import gguf_convert
from modescope.models import hf as hf_module
from modescope.models.base import ChatPrompt
from modescope.models.hf import convert_gguf, load_folder
from modescope.models.presets import PRESETS

pytestmark = pytest.mark.integration

PROBE = "<|im_start|>user\nPick a number between 1 and 10, café 🙂<|im_end|>\n<|im_start|>assistant\n"


def _no_transformers_path(path: Path, staging: Path) -> None:
    raise AssertionError(f"{path} was converted through transformers' loading, not in one pass")


def test_smollm2_converts_to_exactly_what_transformers_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = PRESETS["smollm2-135m-instruct"]
    if not preset.installed():
        pytest.skip(preset.missing_message())
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path))  # never the shared converted cache
    source = preset.locate(tmp_path)
    reference, fast = tmp_path / "converted" / "transformers", tmp_path / "converted" / "fast"
    convert_gguf(source, reference, fast=False)
    with monkeypatch.context() as only_fast:
        only_fast.setattr(hf_module, "_convert_with_transformers", _no_transformers_path)
        convert_gguf(source, fast)

    assert gguf_convert.folder_differences(reference, fast) == []
    expected, actual = (load_folder(str(folder), folder.name, device="cpu") for folder in (reference, fast))
    assert actual.encode(PROBE) == expected.encode(PROBE)
    assert actual.encode(PROBE, add_special_tokens=False) == expected.encode(PROBE, add_special_tokens=False)
    assert actual.vocab.token_bytes == expected.vocab.token_bytes
    prompt = ChatPrompt(user="Pick a number.", prefill="My number is")
    assert actual.render_chat(prompt) == expected.render_chat(prompt)
    assert "<|im_start|>system" in actual.render_chat(prompt)  # the template's default system message
    ids = actual.encode(PROBE)
    assert torch.equal(actual.start(ids)[1], expected.start(ids)[1])
