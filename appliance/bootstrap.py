"""Composition root: builds every object from config and ports, and nothing else does.

Each class receives only what it uses. This is the one module that knows every service; it
reads the process environment (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`) so nothing else has to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import platform
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from appliance import __version__
from appliance.alerts import AlertLog
from appliance.chat.adapter import Adapter, KeyValueStore, adapter_class
from appliance.chat.hub import ChatHub
from appliance.chat.policy import PlatformPolicy
from appliance.chat.service import AdapterService
from appliance.clock import Clock, SystemClock
from appliance.config import (
    AdapterConfig,
    ApplianceConfig,
    EngineConfig,
    GatewayAdapterConfig,
    StatusConfig,
)
from appliance.control import Command, ControlServer
from appliance.errors import ControlError
from appliance.fleet.client import Broker
from appliance.fleet.desired import Telemetry as FleetTelemetry
from appliance.fleet.device import ApplianceDevice
from appliance.fleet.health import HealthSampler
from appliance.fleet.protocol import FleetProtocol
from appliance.fleet.service import FleetService
from appliance.fleet.topics import DeviceTopics
from appliance.hardware.saved import SavedProfiles
from appliance.hardware.service import StartupProfile, TunerService, TunerSettings
from appliance.inference.engine import EngineProfile, InferenceEngine
from appliance.inference.model import Settings
from appliance.inference.runtime import find_runtime
from appliance.skills.actions import ControlActions, SupervisorActions
from appliance.skills.responder import Actions, Responder, Thresholds
from appliance.skills.service import SkillsService
from appliance.status.leds import (
    GpioLed,
    GpioRgbLed,
    LedSink,
    StatusLeds,
    SysfsLed,
    TerminalLed,
    make_pin_factory,
)
from appliance.status.patterns import pattern_for
from appliance.store import StoreService
from appliance.supervisor import Condition, RestartPolicy, Service, StateBoard, Supervisor
from appliance.systemd import Notifier, NullNotifier, from_environ

_LOGGER = logging.getLogger(__name__)

DEV_DATA_DIR_NAME = ".dev-data"
BUILT_IN_MODEL = Path("models/minilm/minilm-l6-v2-int8.json")


@dataclass(frozen=True)
class Ports:
    """Everything outside the process that the appliance touches, injectable for tests."""

    clock: Clock
    pin_factory: Any
    notifier: Notifier
    watchdog_interval_s: float | None = None
    console: TextIO | None = None
    dev: bool = False


def device_ports(environ: Mapping[str, str], *, dev: bool) -> Ports:
    """The real ports: system clock, GPIO (mock pins in dev mode), systemd if present."""
    notifier = from_environ(environ)
    return Ports(
        clock=SystemClock(),
        pin_factory=make_pin_factory(mock=dev),
        notifier=notifier or NullNotifier(),
        watchdog_interval_s=notifier.watchdog_interval_s if notifier else None,
        console=sys.stdout if dev else None,
        dev=dev,
    )


def dev_config(config: ApplianceConfig, checkout: Path) -> ApplianceConfig:
    """Dev-mode overrides: data and socket under the checkout, no sysfs LED."""
    data_dir = checkout / DEV_DATA_DIR_NAME
    return config.model_copy(
        update={
            "device": config.device.model_copy(update={"data_dir": data_dir}),
            "control": config.control.model_copy(update={"socket_path": data_dir / "control.sock"}),
            "status": config.status.model_copy(update={"act_led": False}),
            "engine": config.engine.model_copy(update={"model_path": checkout / BUILT_IN_MODEL}),
            "adapters": config.adapters
            if any(a.type == "gateway" for a in config.adapters)
            else (*config.adapters, GatewayAdapterConfig(type="gateway")),
        }
    )


def checkout_dir() -> Path:
    """The source checkout this package runs from, or the working directory."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def build(config: ApplianceConfig, ports: Ports) -> Supervisor:
    """Build the supervisor and every service, in start order."""
    board = StateBoard()
    commands: dict[str, Command] = {}
    alerts = AlertLog(ports.clock)
    store = StoreService(config.device.data_dir / "appliance.db")
    saved = SavedProfiles(lambda: _kv(store))
    tuned = tuning_enabled(config)
    engine = build_engine(
        config.engine,
        startup_profile=StartupProfile(saved, tuner_settings(config)) if tuned else None,
    )
    tuner = TunerService(engine, saved, ports.clock, tuner_settings(config)) if tuned else None
    actions = _LateActions()
    skills = build_skills(config, engine, alerts, actions, state=lambda: str(board.current()))
    enabled = [cfg for cfg in config.adapters if cfg.enabled]
    adapters = [_adapter(cfg, ports) for cfg in enabled]
    hub = ChatHub(
        store=store.wait_store,
        adapters={a.platform: a for a in adapters},
        answer=lambda event, owner: skills.responder.answer(event.text, is_owner=owner),
        clock=ports.clock,
        policies={
            adapter.platform: PlatformPolicy(
                cfg.dm_policy, cfg.group_policy, frozenset(cfg.allow_from)
            )
            for adapter, cfg in zip(adapters, enabled, strict=True)
        },
    )

    async def kv() -> KeyValueStore:
        return (await store.wait_store()).kv

    services: list[Service] = [
        StatusLeds(board, ports.clock, _led_sinks(config.status, ports)),
        ControlServer(config.control.socket_path, commands),
        store,
        engine,
        skills,
        *([tuner] if tuner else []),
        hub,
        *(AdapterService(adapter, hub, kv) for adapter in adapters),
    ]
    fleet_device = ApplianceDevice(dev=ports.dev, store=store.wait_store)  # bound below
    if config.fleet.enabled:
        services.append(build_fleet(config, ports, store, engine, hub, fleet_device, tuner))
    supervisor = _supervisor(config, ports, board, services, alerts)
    fleet_device.bind(supervisor.identify, supervisor.restart_service, supervisor.views)
    actions.bind(
        SupervisorActions(
            identify=supervisor.identify,
            restart_service=supervisor.restart_service,
            services=lambda: [v.name for v in supervisor.views()],
        )
    )
    commands.update(_commands(config, supervisor, engine, tuner, hub))
    commands["pair"] = _pair_command(hub)
    return supervisor


def build_fleet(
    config: ApplianceConfig,
    ports: Ports,
    store: StoreService,
    engine: InferenceEngine,
    hub: ChatHub,
    device: ApplianceDevice,
    tuner: TunerService | None = None,
) -> FleetService:
    """The fleet client (DESIGN §9) with its health sample and device actions."""

    def live_inventory() -> dict[str, Any]:
        engine_now = engine.snapshot()
        return {
            "model": {
                "name": engine_now.get("model"),
                "version": engine_now.get("model_version"),
                "sha256": engine_now.get("model_sha256"),
                "runtime": engine_now.get("runtime"),
                "profile": tuner.birth() if tuner is not None else None,
            }
        }

    cfg = config.fleet
    device_id = cfg.device_id or _topic_id(config.device.name)
    protocol = FleetProtocol(
        DeviceTopics(cfg.fleet_id, device_id),
        inventory={
            "sw": {"app": __version__, "python": platform.python_version()},
            "hw": {"machine": platform.machine()},
            "adapters": sorted({a.type for a in config.adapters if a.enabled}),
        },
        versions={"app": __version__},
        telemetry=FleetTelemetry(
            health_snapshot_s=cfg.health_snapshot_s,
            health_min_interval_s=cfg.health_min_interval_s,
            log_level=config.device.log_level,
        ),
        will_delay_s=cfg.will_delay_s,
        live_inventory=live_inventory,
    )
    broker = Broker(
        cfg.host,
        cfg.port,
        client_id=f"{cfg.fleet_id}.{device_id}",
        keepalive_s=cfg.keepalive_s,
        ca_file=cfg.tls_ca_file,
        cert_file=cfg.tls_cert_file,
        key_file=cfg.tls_key_file,
    )
    health = HealthSampler(config.device.data_dir, engine.snapshot, hub.depths, device.views)
    return FleetService(
        protocol,
        broker,
        store=store.wait_store,
        clock=ports.clock,
        health=health,
        device=device,
        mqtt_version=cfg.mqtt_version,
        command_key_files=cfg.command_keys,
        outbox_max=cfg.outbox_max,
    )


def _topic_id(name: str) -> str:
    """A device name as a topic id: lowercase, other characters as '-' (Homie ID rule)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    return slug or "appliance"


def _adapter(cfg: AdapterConfig, ports: Ports) -> Adapter:
    """One configured chat adapter."""
    cls = adapter_class(cfg.type)
    if isinstance(cfg, GatewayAdapterConfig):
        return cls(cfg, dev=ports.dev)  # type: ignore[no-any-return]
    return cls(cfg, clock=ports.clock)  # type: ignore[no-any-return]


def build_engine(
    cfg: EngineConfig,
    *,
    startup_profile: Callable[[Path], Awaitable[EngineProfile | None]] | None = None,
) -> InferenceEngine:
    """The inference engine with the configured runtime and settings (or the tuned profile)."""
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) - 1)  # leave one core free
    name = None if cfg.runtime == "auto" else cfg.runtime
    return InferenceEngine(
        cfg.model_path,
        runtime=lambda: find_runtime(name),
        settings=Settings(num_threads=threads, xnnpack=cfg.xnnpack),
        max_batch=cfg.max_batch,
        startup_profile=startup_profile,
    )


def tuning_enabled(config: ApplianceConfig) -> bool:
    """The tuner runs when enabled and the thread count is left to it (`num_threads = 0`)."""
    return config.tuner.enabled and config.engine.num_threads == 0


def tuner_settings(config: ApplianceConfig) -> TunerSettings:
    """The tuner's settings from its config section and the engine's runtime choice."""
    cfg = config.tuner
    return TunerSettings(
        latency_budget_ms=cfg.latency_budget_ms or None,
        idle_s=cfg.idle_s,
        check_s=cfg.check_interval_s,
        throttle_sustained_s=cfg.throttle_sustained_s,
        retune_min_interval_s=cfg.retune_min_interval_s,
        min_gain=cfg.min_gain,
        use_all_cores=cfg.use_all_cores,
        runtime=None if config.engine.runtime == "auto" else config.engine.runtime,
    )


async def _kv(store: StoreService) -> Any:
    """The store's key-value space, once the store is open."""
    return (await store.wait_store()).kv


def build_skills(
    config: ApplianceConfig,
    engine: InferenceEngine,
    alerts: AlertLog,
    actions: Actions,
    *,
    state: Callable[[], str],
    faq_path: Path | None = None,
) -> SkillsService:
    """The skills service on top of `engine`."""
    cfg = config.skills
    return SkillsService(
        embed=engine.embed,
        prepare_embed=functools.partial(engine.embed, track=False),
        faq_path=faq_path or cfg.faq_path,
        thresholds=Thresholds(intent=cfg.intent_threshold, faq=cfg.faq_threshold),
        device_name=config.device.name,
        data_dir=config.device.data_dir,
        state=state,
        model_info=engine.snapshot,
        alerts=alerts,
        actions=actions,
        restart_allowlist=cfg.restart_allowlist,
    )


class _LateActions:
    """Actions whose target (the supervisor) is built after the services that use them."""

    def __init__(self) -> None:
        self._target: Actions | None = None

    def bind(self, target: Actions) -> None:
        self._target = target

    async def identify(self, duration_s: float) -> str:
        assert self._target is not None
        return await self._target.identify(duration_s)

    async def restart(self, service: str) -> str:
        assert self._target is not None
        return await self._target.restart(service)


def _commands(
    config: ApplianceConfig,
    supervisor: Supervisor,
    engine: InferenceEngine,
    tuner: TunerService | None = None,
    hub: ChatHub | None = None,
) -> dict[str, Command]:
    def identify(args: Mapping[str, Any]) -> dict[str, Any]:
        duration_s = float(args.get("duration_s", 15.0))
        supervisor.identify(min(max(duration_s, 1.0), 300.0))
        return {"message": f"Blinking my LED rapidly for {duration_s:.0f} s so you can find me."}

    def restart(args: Mapping[str, Any]) -> dict[str, Any]:
        name = str(args.get("service", ""))
        if name not in config.skills.restart_allowlist:
            raise ControlError(f"{name!r} is not in skills.restart_allowlist; not restarting it")
        supervisor.restart_service(name)
        return {"message": f"Restarting {name}."}

    return {
        "status": lambda _args: {
            **status_report(config, supervisor),
            "engine": engine.snapshot(),
            "tuner": tuner.snapshot() if tuner else None,
            "chat": hub.snapshot() if hub else {},
        },
        "identify": identify,
        "restart": restart,
    }


def _pair_command(hub: ChatHub) -> Command:
    """`appliance pair`: list pending codes and approved senders, approve a code, revoke."""

    async def pair(args: Mapping[str, Any]) -> dict[str, Any]:
        action = args.get("action", "list")
        if action == "approve":
            approval = await hub.approve(str(args.get("code", "")))
            role = "owner" if approval.is_owner else "approved sender"
            return {
                **asdict(approval),
                "message": f"Approved {approval.platform} user {approval.sender_id} as {role}.",
            }
        if action == "revoke":
            platform, sender = str(args.get("platform", "")), str(args.get("sender_id", ""))
            had = await hub.revoke(platform, sender)
            return {
                "revoked": had,
                "message": f"{platform} user {sender}: "
                + ("access withdrawn." if had else "had no access."),
            }
        if action == "list":
            return hub.pairing()
        raise ControlError(f"Unknown pair action {action!r}; use list, approve or revoke")

    return pair


def _supervisor(
    config: ApplianceConfig,
    ports: Ports,
    board: StateBoard,
    services: list[Service],
    alerts: AlertLog,
) -> Supervisor:
    cfg = config.supervisor
    policy = RestartPolicy(
        base_s=cfg.restart_base_s,
        max_s=cfg.restart_max_s,
        max_crashes=cfg.max_crashes,
        window_s=cfg.crash_window_s,
        parked_retry_s=cfg.parked_retry_s,
    )
    return Supervisor(
        services,
        clock=ports.clock,
        notifier=ports.notifier,
        board=board,
        policy=policy,
        start_deadline_s=cfg.start_deadline_s,
        stop_deadline_s=cfg.stop_deadline_s,
        watchdog_interval_s=ports.watchdog_interval_s,
        max_loop_lag_s=cfg.max_loop_lag_s,
        on_alert=alerts.record,
    )


def _led_sinks(cfg: StatusConfig, ports: Ports) -> list[LedSink]:
    sinks: list[LedSink] = []
    if cfg.led_pin is not None and ports.pin_factory is not None:
        sinks.append(
            GpioLed(
                cfg.led_pin,
                pin_factory=ports.pin_factory,
                pwm=cfg.led_pwm,
                active_high=cfg.active_high,
            )
        )
    if cfg.rgb_pins is not None and ports.pin_factory is not None:
        sinks.append(
            GpioRgbLed(*cfg.rgb_pins, pin_factory=ports.pin_factory, active_high=cfg.active_high)
        )
    if cfg.act_led:
        sinks.append(SysfsLed(cfg.act_led_path))
    if ports.console is not None:
        sinks.append(TerminalLed(ports.console))
    return sinks


def status_report(config: ApplianceConfig, supervisor: Supervisor) -> dict[str, Any]:
    """What `appliance status` shows: the supervisor's snapshot, the LED pattern, identity."""
    snapshot = supervisor.snapshot()
    return {
        "device": config.device.name,
        "version": __version__,
        "pid": os.getpid(),
        "led": pattern_for(supervisor.state).name,
        **snapshot,
    }


class StandaloneContext:
    """A ServiceContext for running one service outside the supervisor (the `ask` command)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = logging.getLogger(f"appliance.service.{name}")
        self.is_ready = asyncio.Event()

    def ready(self) -> None:
        self.is_ready.set()

    def set_condition(self, condition: Condition, active: bool, detail: str = "") -> None:
        pass

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        pass


@contextlib.asynccontextmanager
async def standalone_responder(
    config: ApplianceConfig, *, faq_path: Path | None = None
) -> AsyncIterator[Responder]:
    """The model loaded once in this process and a Responder on it, for `appliance ask`.

    Identify and restart go to the running appliance over its control socket, if one runs.
    """
    engine = build_engine(config.engine)
    started = StandaloneContext(engine.name)
    task = asyncio.create_task(engine.run(started))
    try:
        waiter = asyncio.create_task(started.is_ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # the engine failed to load: raise why
        skills = build_skills(
            config,
            engine,
            AlertLog(SystemClock()),
            ControlActions(config.control.socket_path),
            state=lambda: "answering from the command line",
            faq_path=faq_path,
        )
        yield await skills.build()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run(config: ApplianceConfig, ports: Ports) -> int:
    """Run the appliance until SIGTERM/SIGINT; the process exit code."""
    supervisor = build(config, ports)
    code = await supervisor.run()
    ports.notifier.close()
    if supervisor.abandoned:
        # A service that ignores cancellation would hang the interpreter's shutdown forever.
        _LOGGER.error("Exiting without waiting for %s", ", ".join(supervisor.abandoned))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code
