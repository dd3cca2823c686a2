"""A process that dies for real mid-run: a sitecustomize audit hook that SIGKILLs Python when it opens one file."""

from __future__ import annotations

import os
from pathlib import Path

HOOK = '''
import os
import signal
import sys

_target, _mark = os.environ.get("KILL_ON_OPEN"), os.environ.get("KILL_ON_OPEN_MARK")


def _kill_on_open(event, args):
    # the first process that opens the target dies as a crashing decoder or the OOM killer would leave it
    if event == "open" and _target and str(args[0]).endswith(_target) and not os.path.exists(_mark):
        with open(_mark, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


if _target:
    sys.addaudithook(_kill_on_open)
'''


def kill_on_open_env(folder: Path, target: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose first Python process to open a file ending in `target` is SIGKILLed (once)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    env.update(KILL_ON_OPEN=target, KILL_ON_OPEN_MARK=str(folder / "killed"))
    return env
