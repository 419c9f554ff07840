"""The one-pass GGUF conversion writes exactly what transformers' own GGUF loading saves.

Tiny GGUF files of both default architectures (tests/unit/tiny_gguf.py) are converted twice, by
transformers (`fast=False`) and by `gguf_convert`, and the two folders must match file for file and
tensor for tensor, then load and behave alike through `load_folder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modescope.errors import ModescopeError
from modescope.models import gguf_convert
from modescope.models import hf as hf_module
from modescope.models.base import ChatPrompt
from modescope.models.hf import convert_gguf, load_folder
from tests.unit.tiny_gguf import write_gemma, write_llama

WRITERS: dict[str, Callable[[Path], Path]] = {"llama": write_llama, "gemma3": write_gemma}
PROBE = "<|im_start|>the cat sat  in 10 hats<|im_end|><bos> naïve 日本 🙂\n"


def _no_transformers_path(path: Path, staging: Path) -> None:
    raise AssertionError(f"{path} was converted through transformers' loading, not in one pass")


@dataclass(frozen=True)
class Conversions:
    architecture: str
    source: Path
    transformers: Path  # converted by transformers' own loading
    fast: Path  # converted in one pass


@pytest.fixture(scope="module", params=sorted(WRITERS))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Conversions]:
    """The tiny file of one architecture and its two conversions, inside a temporary converted cache."""
    root = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODESCOPE_CACHE", str(root))  # load_folder reads converted folders by their location
        source = WRITERS[request.param](root / "model.gguf")
        reference, fast = root / "converted" / "transformers", root / "converted" / "fast"
        convert_gguf(source, reference, fast=False)
        with pytest.MonkeyPatch.context() as only_fast:
            only_fast.setattr(hf_module, "_convert_with_transformers", _no_transformers_path)
            convert_gguf(source, fast)
        yield Conversions(request.param, source, reference, fast)


def test_fast_conversion_writes_what_transformers_saves(converted: Conversions) -> None:
    # config.json, generation_config.json, tokenizer files byte for byte; every tensor's name, dtype and values
    assert gguf_convert.folder_differences(converted.transformers, converted.fast) == []
    weights = load_file(converted.fast / "model.safetensors")
    assert weights and all(t.dtype == torch.float32 for t in weights.values())


def test_the_tiny_files_exercise_every_transform(converted: Conversions) -> None:
    """The comparison above means something only if transformers changes tensors on the way: llama's q and
    k rows come back un-permuted, Gemma's norms stored as 1 + w come back as w."""
    reader = gguf.GGUFReader(str(converted.source))
    raw = {t.name: gguf.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    weights = load_file(converted.fast / "model.safetensors")
    if converted.architecture == "llama":
        for name, saved in [("attn_q", "q_proj"), ("attn_k", "k_proj")]:
            stored = torch.from_numpy(raw[f"blk.0.{name}.weight"].copy())
            permuted = weights[f"model.layers.0.self_attn.{saved}.weight"]
            assert not torch.equal(permuted, stored)
            assert torch.equal(permuted.sort(dim=0).values, stored.sort(dim=0).values)  # rows reordered only
    else:
        assert torch.equal(weights["model.norm.weight"], torch.from_numpy(raw["output_norm.weight"] - 1))
    kinds = {gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors}
    assert {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"} <= kinds


def test_both_folders_load_and_behave_alike(converted: Conversions) -> None:
    reference = load_folder(str(converted.transformers), "transformers", device="cpu")
    fast = load_folder(str(converted.fast), "fast", device="cpu")
    for add_special in (True, False):
        assert fast.encode(PROBE, add_special) == reference.encode(PROBE, add_special)
    assert fast.vocab.token_bytes == reference.vocab.token_bytes
    assert fast.vocab.special_ids == reference.vocab.special_ids
    assert fast.has_chat_template == reference.has_chat_template
    if reference.has_chat_template:
        prompt = ChatPrompt(user="the cat", system="be brief", prefill="in")
        assert fast.render_chat(prompt) == reference.render_chat(prompt)
    ids = fast.encode(PROBE)
    assert torch.equal(fast.start(ids)[1], reference.start(ids)[1])


def test_chat_template_and_control_tokens_survive(converted: Conversions) -> None:
    fast = load_folder(str(converted.fast), "fast", device="cpu")
    if converted.architecture == "gemma3":  # like Gemma 3 270M's, the tiny file has no template
        assert not fast.has_chat_template
        assert fast.encode("<end_of_turn>", add_special_tokens=False) == [6]
        return
    assert fast.render_chat(ChatPrompt(user="hi")) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert fast.encode("<|im_end|>", add_special_tokens=False) == [2]  # one control token, not its spelling


def test_header_matches_gguf_reader(tmp_path: Path) -> None:
    path = write_llama(tmp_path / "model.gguf")
    header = gguf_convert.read_header(path)
    reader = gguf.GGUFReader(str(path))
    assert [(t.name, t.shape, t.ggml_type, header.data_start + t.offset) for t in header.tensors] == [
        (t.name, tuple(reversed(t.shape.tolist())), int(t.tensor_type), t.data_offset) for t in reader.tensors
    ]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        expected = len(value) if key in gguf_convert.VOCABULARY_ARRAYS else value
        assert header.metadata[key] == expected, key


def test_other_architectures_go_through_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_convert, "FAST_ARCHITECTURES", frozenset({"gemma3"}))
    calls: list[Path] = []
    transformers_path = hf_module._convert_with_transformers
    monkeypatch.setattr(
        hf_module, "_convert_with_transformers", lambda p, s: (calls.append(p), transformers_path(p, s))
    )
    source = write_llama(tmp_path / "model.gguf")
    convert_gguf(source, tmp_path / "converted")
    assert calls == [source]
    assert (tmp_path / "converted" / "model.safetensors").is_file()


def test_a_truncated_file_is_refused_before_converting(tmp_path: Path) -> None:
    source = write_llama(tmp_path / "model.gguf")
    source.write_bytes(source.read_bytes()[:-1000])
    with pytest.raises(ModescopeError, match=r"is not a readable GGUF file .*past the end of the file"):
        convert_gguf(source, tmp_path / "cache" / "converted" / "x")
    assert not (tmp_path / "cache" / "converted" / "x").exists()


def test_stored_tensors_are_detached_from_the_file(tmp_path: Path) -> None:
    """An F32 tensor is a view of the file mapping; the converted tensor must own its memory."""
    path = write_llama(tmp_path / "model.gguf")
    header = gguf_convert.read_header(path)
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    norm = next(t for t in header.tensors if t.name == "output_norm.weight")
    stored = gguf_convert._stored(blob, header, norm)
    assert np.may_share_memory(stored, blob)
    owned = gguf_convert._owned_float32(stored, blob)
    assert not np.may_share_memory(owned, blob) and owned.flags.writeable
    assert np.array_equal(owned, stored)
