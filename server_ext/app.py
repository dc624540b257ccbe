"""The jupyter-server extension: routes under ``/nbscale/api/`` and the background poller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int, Type

from nbscale.config import Config
from nbscale.config import load as load_config

from . import endpoints, jobs, monitoring, pipelines, sweeps, system
from .poller import Poller

# ids are letters, digits, '.', '_' and '-'; one with '..' is refused by NbscaleHandler.prepare
_JOB = r"(?P<job_id>[A-Za-z0-9._-]+)"
_NAME = r"(?P<name>[A-Za-z0-9._-]+)"
_RUN = r"(?P<run_id>[A-Za-z0-9._-]+)"
_SWEEP = r"(?P<sweep_id>[A-Za-z0-9._-]+)"

# relative patterns: the server prefixes its base_url
ROUTES: list[tuple[str, type]] = [
    ("nbscale/api/version", system.VersionHandler),
    ("nbscale/api/backends", system.BackendsHandler),
    ("nbscale/api/cost", system.CostHandler),
    ("nbscale/api/jobs", jobs.JobsHandler),
    (f"nbscale/api/jobs/{_JOB}", jobs.JobHandler),
    (f"nbscale/api/jobs/{_JOB}/logs", jobs.LogsHandler),
    (f"nbscale/api/jobs/{_JOB}/metrics", jobs.MetricsHandler),
    (f"nbscale/api/jobs/{_JOB}/rerun", jobs.RerunHandler),
    ("nbscale/api/endpoints", endpoints.EndpointsHandler),
    (f"nbscale/api/endpoints/{_NAME}", endpoints.EndpointHandler),
    (f"nbscale/api/endpoints/{_NAME}/metrics", endpoints.EndpointMetricsHandler),
    (f"nbscale/api/endpoints/{_NAME}/scale", endpoints.ScaleHandler),
    (f"nbscale/api/endpoints/{_NAME}/drift", monitoring.DriftHandler),
    ("nbscale/api/idle", monitoring.IdleHandler),
    ("nbscale/api/pipelines", pipelines.RunsHandler),
    (f"nbscale/api/pipelines/{_RUN}", pipelines.RunHandler),
    ("nbscale/api/sweeps", sweeps.SweepsHandler),
    (f"nbscale/api/sweeps/{_SWEEP}", sweeps.SweepHandler),
    ("nbscale/api/(?P<rest>.*)", system.NoRouteHandler),  # last: a JSON 404 for the rest
]


class NbscaleExtension(ExtensionApp):
    name = "nbscale"
    description = "nbscale: jobs, pipelines and endpoints for the JupyterLab panel"

    poll_interval = Float(2.0, config=True, help="Seconds between refreshes of active jobs.")
    worker_threads = Int(4, config=True, help="Threads that run blocking engine calls.")
    poller_class = Type(Poller, klass=Poller, config=True, help="What keeps active jobs fresh.")

    def initialize_settings(self) -> None:
        self._executor = ThreadPoolExecutor(self.worker_threads, thread_name_prefix="nbscale")
        self._config: Config | None = None
        self.poller = self.poller_class(
            self.run_blocking, self.config_now, self._set_config, self.poll_interval, self.log
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(ROUTES)

    @property
    def root_dir(self) -> str:
        return self.serverapp.root_dir

    async def run_blocking(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def config_now(self) -> Config:
        """Read the config files now (blocking: call through ``run_blocking``)."""
        config = load_config(cwd=Path(self.root_dir))
        self._set_config(config)
        return config

    def _set_config(self, config: Config) -> None:
        self._config = config

    def config_cached(self) -> Config:
        """The config as of the last poll (the list route needs it only for prices)."""
        if self._config is None:
            self._config = load_config(cwd=Path(self.root_dir))
        return self._config

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        self.poller.start()

    async def stop_extension(self) -> None:
        await self.poller.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
