"""The example notebooks (``notebooks/*.ipynb``) run top to bottom on the built-in models.

Each notebook is executed with nbclient in a fresh ipykernel of this interpreter (the venv's
python, whatever kernelspecs the user has installed), in a temporary working directory, with
this process's environment (``WORKBENCH_CACHE``, offline flags). A few printed values are
checked against what the notebook claims to show.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _kernel_manager():
    """A KernelManager for ipykernel on ``sys.executable``: with no kernelspec folders to search,
    jupyter_client falls back to ipykernel's own spec, whose ``python`` it runs as ``sys.executable``."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def _text(nb) -> str:
    """Everything the executed notebook printed or displayed as plain text."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            elif "data" in o:
                out.append(o["data"].get("text/plain", ""))
    return "\n".join(out)


def _find(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.M)
    assert m, f"the notebook's output has no line matching {pattern!r}"
    return m.group(1)


def _check_trace_heads(text: str) -> None:
    rate = float(_find(r"270 heads; sink rate ([\d.]+)%", text))
    assert 5 < rate <= 100
    assert "pattern self/0 [batch, head, query, key]" in text and "(4, 9, 64, 64)" in text
    assert "head self/0/2 of input 1: (64, 64) equal to the trace: True" in text   # open_run of the saved run


def _check_whisper_heads(text: str) -> None:
    from workbench.inputs import builtin_clip_info, builtin_clips

    said = _find(r"^transcript: (.*)$", text)
    assert said == builtin_clip_info()[builtin_clips()[0].name]["text"]
    overlap = int(_find(r"published heads: (\d+) of 8", text))
    assert overlap >= 3                                    # chance is 8 * 8 / 24 = 2.7


def _check_patching_ioi(text: str) -> None:
    rho = float(_find(r"Spearman\(exact, AtP\) over 270 heads: (-?[\d.]+)", text))
    assert rho > 0.5
    assert "round trip equal: True True" in text


def _check_retrieval_heads(text: str) -> None:
    accuracy = float(_find(r"NIAH accuracy: ([\d.]+) over 2 tests", text))
    n = int(_find(r"retrieval heads: (\d+) of 270 \(score > 0.1\)", text))
    masked = float(_find(r"accuracy with the top 5 retrieval heads masked: ([\d.]+)", text))
    random = float(_find(r"accuracy with 5 random heads masked: ([\d.]+)", text))
    assert accuracy == 1.0                      # smollm2-135m finds this needle at both depths
    assert 1 <= n <= 270 // 4                   # retrieval heads are a sparse set (Wu et al. 2024: < 5%)
    assert masked < accuracy and masked <= random   # masking them hurts, more than masking random heads
    hits, steps = map(int, re.search(r"needle token being emitted: (\d+) of (\d+)", text).groups())
    assert steps >= 2 and hits >= steps - 1     # the top head copies, read from a plain forward
    assert "round trip equal: True True" in text


def _check_importance_pruning(text: str) -> None:
    assert "the L2 norm of importance.michel is 1: True" in text
    most = float(_find(r"removing one of the 5 most important heads: ([\d.]+) nats", text))
    least = float(_find(r"removing one of the 5 least important heads: ([\d.]+) nats", text))
    assert most > 5 * least                     # the gradient estimate ranks heads as ablation does
    for f in ("10%", "20%"):
        imp = float(_find(rf"with {f} of heads removed: importance order (-?[\d.]+)", text))
        rnd = float(_find(rf"with {f} of heads removed: importance order -?[\d.]+, random order (-?[\d.]+)", text))
        assert imp > rnd                        # Michel et al.: pruning by importance keeps the metric longer
    assert "round trip equal: True True" in text
    assert re.search(r"report: runs/notebook-05-report.html \((\d+\.\d) MiB\)", text)


CHECKS = {"01_trace_heads": _check_trace_heads, "02_whisper_heads": _check_whisper_heads,
          "03_patching_ioi": _check_patching_ioi, "04_retrieval_heads": _check_retrieval_heads,
          "05_importance_pruning": _check_importance_pruning}


def test_notebooks_are_committed_without_outputs():
    assert NOTEBOOKS, "no notebooks in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert nb.cells[0].cell_type == "markdown", path.name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"


@pytest.mark.timeout(CELL_TIMEOUT_S * 4)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, km=_kernel_manager(), kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)          # shut the kernel down: we gave it the manager
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}", pytrace=False)
    seconds = time.perf_counter() - t0
    print(f"{path.name}: {seconds:.1f} s")
    check = CHECKS.get(path.stem)
    if check is not None:
        check(_text(nb))


def test_kernel_is_this_interpreter():
    km = _kernel_manager()
    cmd = km.format_kernel_cmd()
    assert cmd[0] == sys.executable, cmd
