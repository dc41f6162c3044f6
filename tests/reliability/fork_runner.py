"""A warm ``geo-os`` launcher: imports torch and Geometry OS once, then forks one child per request that
runs the real CLI entry point (``geometry_os.cli.main``) with the given arguments.

Used by the crash-resume test so that eleven-plus SIGKILLed runs do not pay eleven torch imports. Each
child is a separate process running exactly the code ``geo-os`` runs; killing it with SIGKILL is a real
crash. Protocol (one JSON object per line on stdin, answers on stdout):

    {"argv": [...], "cwd": "...", "stdout": "file", "stderr": "file"}  ->  "pid <pid>"  then  "exit <code>"

The parent reaps each child before reading the next request; ``exit`` is ``-9`` for a SIGKILLed child.
Nothing here runs torch code before forking, so no thread pool is inherited.
"""

from __future__ import annotations

import json
import os
import sys


def warm_up() -> None:
    import matplotlib  # noqa: F401  (curves.png)
    import safetensors.torch  # noqa: F401
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    import geometry_os.cli
    import geometry_os.plugins.amp_trainer.train_command
    import geometry_os.plugins.amp_trainer.trainer
    import geometry_os.systems.pixel_llm.checkpoint
    import geometry_os.systems.pixel_llm.data
    import geometry_os.systems.pixel_llm.modeling
    import geometry_os.systems.pixel_llm.workflows  # noqa: F401


def child(request: dict) -> None:
    """Runs in the forked process: redirect output, run the CLI, never return."""
    code = 0
    try:
        os.chdir(request["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)
        from geometry_os.cli import main

        main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve()
