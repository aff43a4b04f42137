"""The one exception type for bad user input.

``UserError`` is what the workbench raises when the input is wrong (an unknown model, a
parameter of the wrong type, an output folder it may not replace): its message is one line
saying what is wrong and what to do, in terms of the Python API (argument names, never CLI
flags). The CLI prints it as one line and exits with status 2; every other exception is a
bug or an environment failure and keeps its traceback. It subclasses ``ValueError`` so
code that caught ``ValueError`` before keeps working.

A message that names arguments can carry its CLI wording too (``UserError.cli``, printed by
the CLI instead): ``user_error("pass {force} to replace it")`` gives "pass force=True to
replace it" in Python and "pass --force to replace it" on the command line.
"""
from __future__ import annotations

# Python argument -> (how a Python message names it, the CLI flag)
ARG_NAMES = {
    "force": ("force=True", "--force"),
    "truncate": ("truncate=True", "--truncate"),
    "save_patterns": ("save_patterns", "--save-patterns"),
    "max_tokens": ("max_tokens", "--max-tokens"),
    "max_prompts": ("max_prompts", "--max-prompts"),
    "batch_size": ("batch_size", "--batch-size"),
    "chunk_size": ("chunk_size", "--chunk-size"),
    "max_save_gib": ("max_save_gib", "--max-save-gib"),
    "analyses": ("analyses", "--analyses"),
    "params": ("params", "--param"),
    "prompts": ("prompts", "--prompts"),
    "audio": ("audio", "--audio"),
    "seed": ("seed", "--seed"),
    "store": ("store", "--units"),
    "units": ("units", "--units"),
}


class UserError(ValueError):
    """Bad input from the user; the message says what is wrong and what to do.

    ``cli``: the same message naming CLI flags instead of Python arguments (None: the same)."""

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli


class _Names(dict):
    def __init__(self, which: int, values: dict):
        super().__init__(values)
        self.which = which

    def __missing__(self, key: str) -> str:
        return ARG_NAMES[key][self.which]


def user_error(template: str, **values) -> UserError:
    """A UserError from ``template`` whose ``{arg}`` fields name arguments of ``ARG_NAMES``
    (Python spelling in the message, flags in ``.cli``); other fields come from ``values``."""
    return UserError(template.format_map(_Names(0, values)), cli=template.format_map(_Names(1, values)))


__all__ = ["ARG_NAMES", "UserError", "user_error"]
