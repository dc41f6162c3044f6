"""Running the app on uvicorn, with a graceful drain: on SIGTERM/SIGINT the server keeps listening
but answers new requests 503 until the requests in flight have finished (or ``request_timeout``
passed), then shuts down; a second signal stops it at once (uvicorn's own handling)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import uvicorn

from . import app as app_module
from .settings import SETTINGS_ENV, ServeSettings


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains on SIGINT/SIGTERM: it stops taking requests (``/readyz`` answers 503),
    finishes those in flight for up to ``drain_timeout`` seconds, then exits.
    """

    def __init__(self, config: uvicorn.Config, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout

    def handle_exit(self, sig: int, frame: Any) -> None:
        """First signal: start draining in a thread; a second one (or no app state) exits at once."""
        state = app_module.CURRENT
        if state is None or state.draining or self.should_exit:
            return super().handle_exit(sig, frame)
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        state.draining = True
        threading.Thread(target=self._drain, args=(state,), name="pixel-llm-drain", daemon=True).start()

    def _drain(self, state: app_module.ServeState) -> None:
        deadline = time.monotonic() + self.drain_timeout
        # the gate counts every request, a 503 included; wait for the others to finish
        while state.metrics.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.should_exit = True

    async def startup(self, sockets: Any = None) -> None:
        """Start uvicorn, then print the address it serves on (``geo-os: serving on http://HOST:PORT``) to stderr."""
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"geo-os: serving on http://{host}:{port}", file=sys.stderr, flush=True)


def run(settings: ServeSettings, model: Any, tokenizer: Any, host: Any) -> None:
    """Serve until a signal; the model is loaded once (per worker process with ``workers > 1``)."""
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=int(settings.request_timeout) + 1,
    )
    if settings.workers == 1:
        app, _ = app_module.create_app(settings, model, tokenizer, host)
        DrainingServer(uvicorn.Config(app, **common), settings.request_timeout).run()
        return
    from uvicorn.supervisors import Multiprocess

    # uvicorn's supervisor runs its own Server in each worker: shutdown is uvicorn's graceful one
    # (requests in flight finish; the listening socket closes, so new connections are refused)
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    config = uvicorn.Config(
        "geometry_os.plugins.serve.app:app_from_env", factory=True, workers=settings.workers, **common
    )
    Multiprocess(config, sockets=[config.bind_socket()]).run()
