"""The one exception type for bad user input.

``UserError`` is what the workbench raises when the input is wrong (an unknown model, a
parameter of the wrong type, an output folder it may not replace): its message is one line
saying what is wrong and what to do, in terms of the Python API (argument names, never CLI
flags). The CLI prints it as one line and exits with status 2; every other exception is a
bug or an environment failure and keeps its traceback. It subclasses ``ValueError`` so
code that caught ``ValueError`` before keeps working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message says what is wrong and what to do."""


__all__ = ["UserError"]
