"""The inference engine service: one dedicated thread runs the interpreter; callers await.

Requests that arrive while the thread is busy are batched into the next call. The event loop
never blocks on the model: loading, warm-up and every invoke run on the `tflite` thread, which
is the only thread that touches the interpreter (the TFLite docs require that).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from appliance.errors import ApplianceError
from appliance.inference.model import LoadedModel, Settings, load_model
from appliance.inference.quantize import Floats
from appliance.inference.runtime import Runtime, find_runtime
from appliance.inference.stats import LatencyStats
from appliance.supervisor import ServiceContext

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


class EngineNotReadyError(ApplianceError):
    """The engine has no model loaded yet."""

    code = "engine_not_ready"


@dataclass(frozen=True)
class EngineProfile:
    """Settings to serve with, chosen for this board and model (the tuner's, DESIGN §6)."""

    settings: Settings
    max_batch: int
    runtime: str | None = None  # a distribution name; None keeps the configured runtime
    name: str = ""
    tuned_at: float | None = None


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[Floats] = field(repr=False)
    queued_at: float = 0.0
    track: bool = True


class InferenceEngine:
    """Embeds texts with the loaded model; a Service."""

    name = "engine"

    def __init__(
        self,
        manifest_path: Path,
        *,
        runtime: Callable[[], Runtime],
        settings: Settings | None = None,
        max_batch: int = 16,
        startup_profile: Callable[[Path], Awaitable[EngineProfile | None]] | None = None,
    ) -> None:
        self._manifest_path = manifest_path
        self._find_runtime = runtime
        self._settings = settings or Settings()
        self._max_batch = max_batch
        self._configured = EngineProfile(self._settings, max_batch)
        self._startup_profile = startup_profile
        self._profile: EngineProfile | None = None
        self.received = 0  # requests ever received: the tuner's sign of activity
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._model: LoadedModel | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.stats = LatencyStats()

    @property
    def model(self) -> LoadedModel:
        """The model being served; raises EngineNotReadyError before the first load."""
        if self._model is None:
            raise EngineNotReadyError("The inference engine has not loaded its model yet")
        return self._model

    async def run(self, ctx: ServiceContext) -> None:
        """Load the model on the engine thread, then serve batches until cancelled."""
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tflite")
        try:
            self._model = await self._load_first()
            ctx.ready()
            while True:
                await self._serve(await self._next_batch())
        finally:
            self._fail_pending(EngineNotReadyError("The inference engine stopped"))
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread, self._model = None, None

    async def embed(self, texts: Sequence[str], *, track: bool = True) -> Floats:
        """Embeddings [len(texts), dim], computed on the engine thread.

        `track=False` keeps set-up work (embedding the skills' examples) out of the latency
        statistics, which describe answering messages.
        """
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        request = _Request(
            list(texts), asyncio.get_running_loop().create_future(), time.perf_counter(), track
        )
        self._queue.put_nowait(request)
        self.received += 1
        return await request.future

    async def swap_model(self, manifest_path: Path) -> None:
        """Load another model; on any failure keep serving the current one and raise why."""
        new = await self._on_thread(self._load, manifest_path)
        self._model, self._manifest_path = new, manifest_path

    @property
    def manifest_path(self) -> Path:
        """The manifest of the model being served (or about to be)."""
        return self._manifest_path

    async def apply_profile(self, profile: EngineProfile) -> None:
        """Reload the served model with `profile`; on any failure keep the current settings."""
        previous = (self._settings, self._profile)
        self._settings, self._profile = profile.settings, profile
        try:
            new = await self._on_thread(self._load, self._manifest_path)
        except BaseException:
            self._settings, self._profile = previous
            raise
        self._model, self._max_batch = new, profile.max_batch
        _LOGGER.info("Serving with profile %s", profile.name or profile.settings)

    async def _load_first(self) -> LoadedModel:
        """Load with the persisted profile if there is one, else (or if it fails) as configured."""
        profile = None
        if self._startup_profile is not None:
            profile = await self._startup_profile(self._manifest_path)
        if profile is not None:
            self._settings, self._max_batch, self._profile = (
                profile.settings,
                profile.max_batch,
                profile,
            )
            try:
                return await self._on_thread(self._load, self._manifest_path)
            except ApplianceError as err:
                _LOGGER.warning("Profile %s failed (%s); loading as configured", profile.name, err)
        self._settings, self._max_batch = self._configured.settings, self._configured.max_batch
        self._profile = None
        return await self._on_thread(self._load, self._manifest_path)

    def _load(self, manifest_path: Path) -> LoadedModel:
        wanted = self._profile.runtime if self._profile else None
        runtime = self._find_runtime()
        if wanted and runtime.name != wanted:
            runtime = find_runtime(wanted)  # the tuner chose the other installed runtime
        return load_model(manifest_path, runtime, self._settings)

    async def _next_batch(self) -> list[_Request]:
        batch = [await self._queue.get()]
        size = len(batch[0].texts)
        while not self._queue.empty() and size < self._max_batch:
            batch.append(self._queue.get_nowait())
            size += len(batch[-1].texts)
        return batch

    async def _serve(self, batch: list[_Request]) -> None:
        texts = [t for request in batch for t in request.texts]
        model = self.model
        try:
            vectors = await self._on_thread(model.embed, texts)
        except Exception as err:  # a model failure fails these requests, not the engine
            _LOGGER.warning("Inference failed for %d messages: %s", len(texts), err)
            self.stats.record_error(len(texts))
            for request in batch:
                _settle(request.future, exception=err)
            return
        done = time.perf_counter()
        start = 0
        for request in batch:
            end = start + len(request.texts)
            if request.track:
                self.stats.record((done - request.queued_at) * 1000, len(request.texts))
            _settle(request.future, result=vectors[start:end])
            start = end

    async def _on_thread(self, work: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise EngineNotReadyError("The inference engine is not running")
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    def _fail_pending(self, error: Exception) -> None:
        while not self._queue.empty():
            _settle(self._queue.get_nowait().future, exception=error)

    def snapshot(self) -> dict[str, Any]:
        """Model, runtime and latency figures for `status` and the fleet's health report."""
        model = self._model
        info: dict[str, Any] = {"queue_depth": self._queue.qsize(), **self.stats.snapshot()}
        if model is not None:
            info.update(
                model=model.manifest.name,
                model_version=model.manifest.version,
                model_sha256=model.manifest.sha256,
                runtime=f"{model.runtime.name} {model.runtime.version}",
                threads=model.settings.num_threads,
                xnnpack=model.settings.xnnpack,
                batch=self._max_batch,
                profile=self._profile.name if self._profile else None,
            )
        return info


def _settle(
    future: asyncio.Future[Floats],
    *,
    result: Floats | None = None,
    exception: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)  # type: ignore[arg-type]
