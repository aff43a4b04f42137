"""Run the CLI in this process and check a one-line user error (shared by the safety tests)."""
from __future__ import annotations


def cli(capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of ``workbench ARGS`` run in this process."""
    from workbench.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert exit 2 and exactly one ``workbench: error:`` line holding every needle; return it."""
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("workbench: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
