"""Run an app under uvicorn in a background thread of this process, for tests, benchmarks and notebooks.

Example:
    >>> import httpx, steerlab as sl
    >>> from steerlab.server import ServerConfig, create_app, serve_in_thread
    >>> h = sl.load("shared:stories260K")
    >>> with serve_in_thread(create_app(h, ServerConfig(model_name="stories"))) as url:
    ...     httpx.get(url + "/health").status_code
    200
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from steerlab.errors import SteerlabError


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, start_timeout_s: float = 30.0, log_level: str = "error"
) -> Iterator[str]:
    """Serve ``app`` (an ASGI app, e.g. :func:`~steerlab.server.create_app`'s) on ``host:port`` in a daemon
    thread and yield its base URL (``http://HOST:PORT``) once it accepts connections; on exit, ask it to
    shut down (open streams end, the app's lifespan closes) and wait for the thread. ``port=0`` takes a
    free port, the one the server itself bound (no race). A server that cannot start (the port taken, a
    failing lifespan) or is not up within ``start_timeout_s`` is a one-line :class:`SteerlabError`.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))

    def run() -> None:
        try:
            server.run()
        except SystemExit:  # uvicorn's way to fail at startup; reported below, in the caller's thread
            pass

    thread = threading.Thread(target=run, name="steerlab-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise SteerlabError(f"the server did not start on {host}:{port} (port taken, or the app's startup failed)")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(start_timeout_s)
            raise SteerlabError(f"the server did not start on {host}:{port} within {start_timeout_s:g} s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(start_timeout_s)
