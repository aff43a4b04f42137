"""``python _kill_driver.py K SIGNAL ARGS...``: run ``workbench ARGS`` and send this process (the
sweep's driver) ``SIGNAL`` (KILL or TERM) right after its K-th work unit is recorded, as a
killed or terminated driver would leave it."""
from __future__ import annotations

import os
import signal
import sys

from workbench.patching import units

K, SIG, saved = int(sys.argv[1]), getattr(signal, f"SIG{sys.argv[2]}"), []
_save = units.UnitStore.save


def save(self, unit, result, seconds=0.0):
    _save(self, unit, result, seconds)
    saved.append(unit)
    if len(saved) == K:
        os.kill(os.getpid(), SIG)


units.UnitStore.save = save
if __name__ == "__main__":
    from workbench.cli import main

    sys.exit(main(sys.argv[3:]))
