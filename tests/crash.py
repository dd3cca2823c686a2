"""A process that dies or hangs for real mid-run: a sitecustomize audit hook that SIGKILLs Python, or makes it
sleep for good (a stalled read, a decoder deadlock), when it opens one file."""

from __future__ import annotations

import os
from pathlib import Path

HOOK = '''
import os
import signal
import sys
import time

_target, _mark = os.environ.get("KILL_ON_OPEN"), os.environ.get("KILL_ON_OPEN_MARK")
_hang = os.environ.get("KILL_ON_OPEN_HANG") == "1"


def _kill_on_open(event, args):
    # the first process that opens the target dies as a crashing decoder or the OOM killer would leave it
    if event == "open" and _target and str(args[0]).endswith(_target) and not os.path.exists(_mark):
        with open(_mark, "w") as f:
            f.write(str(os.getpid()))
        if _hang:  # hangs until someone kills it, as a stalled read would
            while True:
                time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)


if _target:
    sys.addaudithook(_kill_on_open)
'''


def kill_on_open_env(folder: Path, target: str, env: dict[str, str] | None = None,
                     hang: bool = False) -> dict[str, str]:
    """An environment whose first Python process to open a file ending in `target` is SIGKILLed (once), or with
    hang=True sleeps there until it is killed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    env.update(KILL_ON_OPEN=target, KILL_ON_OPEN_MARK=str(folder / "killed"), KILL_ON_OPEN_HANG="1" if hang else "0")
    return env
