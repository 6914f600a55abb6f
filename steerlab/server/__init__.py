"""The OpenAI-compatible HTTP server with per-request interventions (a shell over the library).

``create_app(handle, ServerConfig(model_name=...), presets)`` builds the FastAPI app; ``steerlab serve``
runs it under uvicorn; ``serve_in_thread(app)`` serves it from a background thread of this process (tests,
benchmarks, notebooks). See ``docs/serving.md``.
"""

from steerlab.server.app import ServerConfig, create_app, exposure_warning, is_loopback, load_presets
from steerlab.server.scheduler import Job, QueueFull, Result, RowSampler, Scheduler
from steerlab.server.thread import serve_in_thread

__all__ = [
    "Job",
    "QueueFull",
    "Result",
    "RowSampler",
    "Scheduler",
    "ServerConfig",
    "create_app",
    "exposure_warning",
    "is_loopback",
    "load_presets",
    "serve_in_thread",
]
