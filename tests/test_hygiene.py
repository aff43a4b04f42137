"""Test-suite hygiene (issue 11, part 3): what the suite imports, what it may skip, what it may
assert, and that every family the README names has a tiny model here.

The source checks parse every test file with ``ast`` (no regex over code).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TOP_LEVEL_FOLDERS = ("analyses", "app", "cuda")       # installed as workbench.analyses, workbench.app, ...
WALL_CLOCK = {("time", "perf_counter"), ("time", "time"), ("time", "monotonic"), ("time", "perf_counter_ns"),
              ("time", "time_ns"), ("time", "monotonic_ns")}


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_repository_root_is_not_importable():
    """The card's top-level folders are importable only through the installed package
    (``app`` may resolve to the namespace package tests/app, never to the repository's app/)."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("analyses")
    for name in TOP_LEVEL_FOLDERS:
        spec = importlib.util.find_spec(name)
        where = [] if spec is None else [*(spec.submodule_search_locations or []), spec.origin or ""]
        assert str(ROOT / name) not in [str(Path(w).resolve()) for w in where if w] + \
            [str(Path(w).resolve().parent) for w in where if w and w.endswith(".py")], (name, where)
    assert Path(importlib.import_module("workbench.analyses").__file__).parent == ROOT / "analyses"


def _is_call_to(node: ast.AST, owner: str, attr: str) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return isinstance(f, ast.Attribute) and f.attr == attr and isinstance(f.value, ast.Name) and f.value.id == owner


def test_no_module_level_importorskip():
    """A module-level ``pytest.importorskip`` skips every test of the file, related or not; a
    dependency the README installs is imported plainly (missing = failure)."""
    bad = []
    for path in _test_files():
        for stmt in _parse(path).body:
            if any(_is_call_to(n, "pytest", "importorskip") for n in ast.walk(stmt)):
                bad.append(f"{path.relative_to(ROOT)}:{stmt.lineno}")
    assert bad == [], f"module-level importorskip: {bad}"


def test_tests_import_the_installed_package():
    """``workbench.analyses``, never the repository's top-level ``analyses`` folder (and so on)."""
    bad = []
    for path in _test_files():
        for node in ast.walk(_parse(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] in TOP_LEVEL_FOLDERS]
    assert bad == [], f"imports of top-level folders (use workbench.<name>): {bad}"


def _wall_clock_calls(files: list[Path]) -> set[str]:
    """Names of functions (any file) that return a value computed from a wall-clock reading."""
    out: set[str] = set()
    for _ in range(3):                                       # helpers of helpers
        for path in files:
            for fn in ast.walk(_parse(path)):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    tainted = _tainted_names(fn, out)
                    if any(isinstance(r, ast.Return) and r.value is not None and _reads_clock(r.value, tainted, out)
                           for r in ast.walk(fn)):
                        out.add(fn.name)
    return out


def _reads_clock(expr: ast.AST, tainted: set[str], clock_fns: set[str]) -> bool:
    for n in ast.walk(expr):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in WALL_CLOCK:
                return True
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in clock_fns:
                return True
        if isinstance(n, ast.Name) and n.id in tainted:
            return True
    return False


def _tainted_names(fn: ast.AST, clock_fns: set[str]) -> set[str]:
    tainted: set[str] = set()
    for _ in range(3):
        for n in ast.walk(fn):
            if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and n.value is not None \
                    and _reads_clock(n.value, tainted, clock_fns):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                tainted |= {t.id for tg in targets for t in ast.walk(tg) if isinstance(t, ast.Name)}
    return tainted


def _asserts_outside_wait_loops(fn: ast.AST):
    """Asserts of a function, except those inside ``while`` loops (a polling deadline that
    stops a hung wait is not a claim about speed)."""
    def visit(node, in_while):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Assert) and not in_while:
                yield child
            yield from visit(child, in_while or isinstance(child, ast.While))
    yield from visit(fn, False)


def test_no_wall_clock_assertions():
    """Speed belongs in benchmarks/: no assert in a test reads a clock (directly, through a
    variable, or through a helper that returns elapsed time)."""
    files = _test_files()
    clock_fns = _wall_clock_calls(files)
    bad = []
    for path in files:
        for fn in ast.walk(_parse(path)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                tainted = _tainted_names(fn, clock_fns)
                bad += [f"{path.relative_to(ROOT)}:{a.lineno}" for a in _asserts_outside_wait_loops(fn)
                        if _reads_clock(a.test, tainted, clock_fns)]
    assert bad == [], f"wall-clock assertions (move the timing to benchmarks/): {bad}"


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The source checks above flag the patterns they exist for."""
    src = tmp_path / "test_x.py"
    src.write_text(
        "import time\nimport pytest\nfrom analyses import flow\npytest.importorskip('x')\n"
        "def timed():\n    t0 = time.perf_counter()\n    return time.perf_counter() - t0\n"
        "def test_a():\n    s = timed()\n    assert s < 1\n"
        "def test_b():\n    t0 = time.time()\n    dt = time.time() - t0\n    assert dt < 2\n"
        "def test_c():\n    t0 = time.monotonic()\n    while True:\n        assert time.monotonic() - t0 < 9\n")
    tree = _parse(src)
    assert any(_is_call_to(n, "pytest", "importorskip") for n in ast.walk(tree.body[3]))
    assert [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] == ["analyses"]
    fns = _wall_clock_calls([src])
    assert fns == {"timed"}
    flagged = []
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        tainted = _tainted_names(fn, fns)
        flagged += [fn.name for a in _asserts_outside_wait_loops(fn) if _reads_clock(a.test, tainted, fns)]
    assert flagged == ["test_a", "test_b"]


# README name -> tests/tiny.py family key
README_FAMILIES = {
    "Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2", "Qwen3": "qwen3", "SmolLM (Llama)": "llama", "SmolLM2 (Llama)": "llama", "SmolLM3": "smollm3",
    "OLMo 2": "olmo2", "Phi-3": "phi3", "Gemma 2": "gemma2", "Gemma 3": "gemma3", "GPT-NeoX (Pythia)": "gpt_neox",
    "GPT-2": "gpt2", "BERT": "bert", "RoBERTa": "roberta", "Whisper": "whisper", "wav2vec2": "wav2vec2",
    "HuBERT": "hubert",
}


def readme_families() -> list[str]:
    """The names in the README sentence 'Families (declared in ...): A, B, ..., Z. Tested ...'"""
    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"Families \((?:declared|one record each) in `workbench/adapters\.py`\): (.*?)\. Tested", text)
    assert m, "README no longer lists the families in the sentence this test reads; update the test"
    body = re.sub(r"\((text|attention)[^()]*\)", "", m.group(1))            # drop explanatory parentheses
    names = [n.strip() for n in re.split(r",| and ", body) if n.strip()]
    return names


def test_every_readme_family_has_a_tiny_model():
    from tiny import FAMILIES, tiny_hf

    names = readme_families()
    assert len(names) >= 15, names
    unknown = [n for n in names if n not in README_FAMILIES]
    assert unknown == [], f"README names families this test does not know; add them here and to tests/tiny.py: {unknown}"
    missing = sorted({README_FAMILIES[n] for n in names} - set(FAMILIES))
    assert missing == [], f"no tiny model in tests/tiny.py for {missing}"
    for key in {README_FAMILIES[n] for n in names}:
        assert tiny_hf(key).config.model_type.startswith(key), key          # gemma3: gemma3_text
