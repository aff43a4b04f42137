"""Builders for the built-in models (converted once into the cache) and the generic loader."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ._cache import cached_folder, sha256_files
from .builtin import BUILTINS, require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _progress(msg: str, quiet: bool) -> None:
    if not quiet:
        import sys

        print(msg, file=sys.stderr, flush=True)


def build_smollm2(tmp: Path, quiet: bool = True) -> dict:
    """Dequantise the GGUF checkpoint into a HF folder (about 20 s on 2 cores)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (folder,) = require("smollm2-135m")
    gguf = folder / SMOLLM2_GGUF
    _progress(f"converting {gguf.name} (GGUF Q4_1 -> float32 safetensors, once)...", quiet)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.to_json_file(tmp / "config.json")
    save_model(model, str(tmp / "model.safetensors"))
    tok.save_pretrained(tmp)
    return {"source": str(gguf), "weights_sha256": sha256_files([gguf]), "format": "gguf Q4_1"}


def build_whisper(name: str):
    def build(tmp: Path, quiet: bool = True) -> dict:
        from ._ct2 import read_ct2, whisper_from_ct2, whisper_prompt_ids

        dirs = require(name)
        if name == "whisper-tiny.en":
            parts = [dirs[0] / "model" / "model.bin"]
            tokenizer = dirs[0] / "model" / "tokenizer.json"
        else:
            parts = [dirs[0] / "data" / "model.bin.part1", dirs[1] / "data" / "model.bin.part2"]
            tokenizer = next((p for d in dirs for p in d.rglob("tokenizer.json")), None)
        _progress(f"converting {name} (CTranslate2 -> float32 safetensors, once)...", quiet)
        model = whisper_from_ct2(read_ct2(parts if len(parts) > 1 else parts[0]))
        model.save_pretrained(tmp)
        info = {"source": ", ".join(map(str, parts)), "weights_sha256": sha256_files(parts), "format": "ctranslate2"}
        if tokenizer is not None:
            shutil.copy(tokenizer, tmp / "tokenizer.json")
        info["prompt_ids"] = whisper_prompt_ids(model.config.vocab_size, tokenizer)
        return info

    return build


def hf_kwargs(dtype, device=None, device_map=None, max_memory=None, offload_folder=None) -> dict:
    """Keyword arguments for ``from_pretrained``: the resolved dtype and where the weights go.

    One device other than the CPU is given as ``device_map={"": device}`` so the weights
    are read straight onto it (no CPU copy first); ``device_map`` dispatches with accelerate.
    """
    kw: dict = {"dtype": dtype}
    if device_map is not None:
        kw["device_map"] = device_map
        if max_memory is not None:
            kw["max_memory"] = max_memory
        if offload_folder is not None:
            kw["offload_folder"] = str(offload_folder)
    elif device is not None and device.type != "cpu":
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        kw["device_map"] = {"": str(device)}
    return kw


def load_builtin(name: str, quiet: bool = True, hf_kw: dict | None = None):
    """(hf_model, tokenizer, feature_extractor, info) for a built-in name.

    ``hf_kw``: ``from_pretrained`` keyword arguments (``hf_kwargs``); default float32 on the CPU.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    kw = hf_kw or {"dtype": torch.float32}
    t0 = time.perf_counter()
    if name == "minilm-l6":
        (pkg,) = require(name)
        folder = pkg / "model"
        hf = AutoModel.from_pretrained(folder, **kw)
        tok = AutoTokenizer.from_pretrained(folder)
        info = {"source": str(folder), "weights_sha256": sha256_files(sorted(folder.glob("*.safetensors")))}
        return hf, tok, None, info
    if name == "smollm2-135m":
        folder, info = cached_folder(name, lambda tmp: build_smollm2(tmp, quiet))
        hf = AutoModelForCausalLM.from_pretrained(folder, **kw)
        tok = AutoTokenizer.from_pretrained(folder)
        return hf, tok, None, {**info, "cache": str(folder), "load_s": time.perf_counter() - t0}
    if name.startswith("whisper"):
        from tokenizers import Tokenizer
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        folder, info = cached_folder(name, lambda tmp: build_whisper(name)(tmp, quiet))
        hf = WhisperForConditionalGeneration.from_pretrained(folder, **kw)
        tj = folder / "tokenizer.json"
        tok = Tokenizer.from_file(str(tj)) if tj.is_file() else None
        fe = WhisperFeatureExtractor(feature_size=hf.config.num_mel_bins)
        return hf, tok, fe, {**info, "cache": str(folder), "load_s": time.perf_counter() - t0}
    raise KeyError(name)


def load_pretrained(path_or_id: str, dtype: torch.dtype | str = torch.float32, *, hf_kw: dict | None = None,
                    revision: str | None = None):
    """A HF hub id or local folder: (hf_model, tokenizer, feature_extractor, info).

    ``hf_kw`` (``hf_kwargs``) overrides ``dtype``; ``revision`` is a hub branch, tag or commit.
    Raises UnsupportedModelError (listing families) for an unsupported architecture and
    OSError / ValueError from transformers when the folder or id cannot be loaded.
    """
    import transformers
    from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer

    from ..adapters import family_for

    kw = hf_kw or {"dtype": dtype}
    rev = {"revision": revision} if revision is not None else {}
    cfg = AutoConfig.from_pretrained(path_or_id, **rev)
    fam = family_for(cfg.model_type)
    cls = getattr(transformers, fam.hf_class)               # the family record names the HF class
    hf = cls.from_pretrained(path_or_id, **kw, **rev)
    tok = fe = None
    local = Path(path_or_id).is_dir()
    # transformers builds an empty tokenizer for a folder that holds none: only load saved files
    if "tokenizer" in fam.preprocess and (not local or _has_any(path_or_id, _TOKENIZER_FILES)):
        try:
            tok = AutoTokenizer.from_pretrained(path_or_id, **rev)
        except (OSError, ValueError, TypeError):
            tok = None
    if "feature_extractor" in fam.preprocess:
        try:
            fe = AutoFeatureExtractor.from_pretrained(path_or_id, **rev)
        except (OSError, ValueError):
            fe = None
    info = {"source": str(path_or_id), **rev}
    p = Path(path_or_id)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
        if files:
            info["weights_sha256"] = sha256_files(files)
    if fam.kind == "speech-seq2seq":
        info["prompt_ids"] = _whisper_prompt_from_config(hf.config)
    return hf, tok, fe, info


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model", "merges.txt")


def _has_any(folder: str, names: tuple[str, ...]) -> bool:
    return any((Path(folder) / n).is_file() for n in names)


def _whisper_prompt_from_config(cfg) -> list[int]:
    start = cfg.decoder_start_token_id
    english_only = cfg.vocab_size < 51865
    notimestamps = start + (5 if english_only else 105)  # layout of Whisper's special tokens
    return [start, notimestamps] if english_only else [start, start + 1, start + 101, notimestamps]


__all__ = ["BUILTINS", "load_builtin", "load_pretrained", "json"]
