"""Typed, frozen, strict config: TOML in, `ApplianceConfig` out, problems with file and line.

Validators do no I/O of their own. Secrets given as `{ file = "…" }` or `{ credential = "…" }`
are read by the reader that `load_config()` passes in through the validation context, so a
missing secret file is reported like any other problem: with its file, line and key.
Secret values are `SecretStr` and never appear in logs, errors or `repr()`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
)

from appliance.config_lines import find_line, key_lines
from appliance.errors import ConfigError, ConfigProblem

DEFAULT_CONFIG_PATH = Path("/etc/appliance/config.toml")

SecretReader = Callable[[str, str], str]
"""Reads a secret reference: (kind, name) → value, kind being "file" or "credential"."""


def _resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """Accept a literal secret, or a `{file=…}` / `{credential=…}` reference (no I/O here)."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in ("file", "credential"):
        raise ValueError('a secret is a string, { file = "PATH" } or { credential = "NAME" }')
    kind, name = next(iter(value.items()))
    if not isinstance(name, str) or not name:
        raise ValueError(f"the secret's {kind} must be a non-empty string")
    reader = (info.context or {}).get("read_secret")
    if reader is None:
        raise ValueError("secret references are resolved only by load_config()")
    return reader(kind, name)


Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


class _Section(BaseModel):
    """Base of every config table: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


LogLevel = Literal["debug", "info", "warning", "error"]


class DeviceConfig(_Section):
    """Identity, data location and logging of the device."""

    name: str = Field(
        default="appliance",
        min_length=1,
        max_length=63,
        description="Name shown to people and in fleet status (no unit).",
    )
    data_dir: Path = Field(
        default=Path("/data/appliance"),
        description="Directory for everything that changes: database, keys, "
        "models, tuner profile (a path on the writable data partition).",
    )
    log_level: LogLevel = Field(default="info", description="Least severe log level written.")


class SupervisorConfig(_Section):
    """How services are started, restarted and stopped (DESIGN §3)."""

    start_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a service may take to become ready before the next one starts anyway.",
    )
    stop_deadline_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a service may take to stop after cancellation before it is abandoned.",
    )
    restart_base_s: float = Field(
        default=1.0, gt=0, description="Seconds before the first restart after a crash."
    )
    restart_max_s: float = Field(
        default=300.0, gt=0, description="Upper bound in seconds of the restart backoff."
    )
    max_crashes: int = Field(
        default=5,
        ge=1,
        description="Crashes tolerated within "
        "`crash_window_s`; one more parks the service (count).",
    )
    crash_window_s: float = Field(
        default=600.0, gt=0, description="Seconds over which crashes are counted."
    )
    parked_retry_s: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds before a parked "
        "service is tried again; 0 keeps it parked until restarted.",
    )
    max_loop_lag_s: float = Field(
        default=5.0,
        gt=0,
        description="Event-loop lag in seconds beyond which the systemd watchdog is no longer fed.",
    )


class StatusConfig(_Section):
    """Status LEDs (DESIGN §4). GPIO numbers are BCM numbers."""

    led_pin: int | None = Field(
        default=17, ge=0, le=53, description="GPIO of the single status LED; unset for none."
    )
    led_pwm: bool = Field(
        default=True,
        description="Drive the LED with PWM so the heartbeat fades; off for a plain on/off LED.",
    )
    rgb_pins: tuple[int, int, int] | None = Field(
        default=None, description="GPIOs of an RGB LED as [red, green, blue]; unset for none."
    )
    active_high: bool = Field(
        default=True,
        description="True when the LED lights with the pin "
        "high (anode on the GPIO, cathode to ground via a resistor).",
    )
    act_led: bool = Field(
        default=False, description="Mirror the pattern on the board's ACT LED through sysfs."
    )
    act_led_path: Path = Field(
        default=Path("/sys/class/leds/ACT"), description="sysfs directory of the ACT LED."
    )


class ControlConfig(_Section):
    """The local control socket that `appliance status` reads."""

    socket_path: Path = Field(
        default=Path("/run/appliance/control.sock"),
        description="Unix socket path; readable by the appliance group.",
    )


class EngineConfig(_Section):
    """The local inference engine (DESIGN §5)."""

    model_path: Path = Field(
        default=Path("/opt/appliance/models/minilm/minilm-l6-v2-int8.json"),
        description="Manifest of the model to serve (JSON next to its .tflite).",
    )
    runtime: Literal["auto", "ai-edge-litert", "tflite-runtime"] = Field(
        default="auto", description="TFLite runtime; auto takes LiteRT, then tflite-runtime."
    )
    num_threads: int = Field(
        default=0, ge=0, le=16, description="Interpreter threads; 0 leaves one core free."
    )
    xnnpack: bool = Field(default=True, description="Use the XNNPACK delegate (int8 on LiteRT).")
    max_batch: int = Field(
        default=16, ge=1, le=256, description="Most messages embedded in one interpreter call."
    )


class TunerConfig(_Section):
    """The hardware-profile tuner (DESIGN §6): measures and keeps the engine's best settings."""

    enabled: bool = Field(
        default=True,
        description="Tune the engine on this board and keep it tuned; applies only while "
        "`engine.num_threads` is 0 (an explicit thread count pins the engine's settings).",
    )
    latency_budget_ms: float = Field(
        default=0.0,
        ge=0,
        description="p95 latency in ms one interpreter call may take; 0 uses the model "
        "manifest's budget.",
    )
    idle_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds the engine must have been idle before each measuring slice.",
    )
    check_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between checks for throttling and model changes."
    )
    throttle_sustained_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds of continuous throttling (or heat above the board's throttle "
        "temperature) after which the tuner measures again.",
    )
    retune_min_interval_s: float = Field(
        default=3600.0, ge=0, description="Least seconds between two throttling re-tunes."
    )
    min_gain: float = Field(
        default=0.03,
        ge=0,
        le=1,
        description="Fraction by which a setting must beat the runtime's default in a paired "
        "re-measurement to be chosen (noise margin; 0.03 = 3 %).",
    )
    use_all_cores: bool = Field(
        default=False,
        description="Let the tuner try every core instead of leaving one free for chat and fleet.",
    )


class SkillsConfig(_Section):
    """Intent routing and the operator's FAQ."""

    faq_path: Path | None = Field(
        default=None,
        description="Markdown FAQ: each `## ` heading a question, text below the answer.",
    )
    intent_threshold: float = Field(
        default=0.35, ge=0, le=1, description="Cosine similarity below which a message is unknown."
    )
    faq_threshold: float = Field(
        default=0.35, ge=0, le=1, description="Cosine similarity an FAQ entry must reach."
    )
    restart_allowlist: tuple[str, ...] = Field(
        default=(),
        description="Services owners may restart from chat (supervisor names or systemd units).",
    )


class _AdapterBase(_Section):
    """Keys every chat adapter has."""

    enabled: bool = Field(default=True, description="Run this adapter.")
    name: str | None = Field(
        default=None,
        description="Instance name when a platform is configured twice; defaults to the type.",
    )
    allow_from: tuple[str, ...] = Field(
        default=(),
        description="Platform user ids allowed to "
        "talk to the bot without pairing (list of strings; `*` allows everyone).",
    )
    dm_policy: Literal["pairing", "allowlist", "open", "disabled"] = Field(
        default="pairing",
        description="Direct messages: `pairing` sends strangers a code the owner approves "
        "with `appliance pair approve CODE`; `allowlist` answers only `allow_from` and approved "
        "senders; `open` answers everyone; `disabled` answers nobody.",
    )
    group_policy: Literal["allowlist", "open"] = Field(
        default="allowlist",
        description="Groups: the bot answers only when mentioned; `allowlist` further limits "
        "that to `allow_from` and approved senders, `open` answers anyone who mentions it.",
    )


class GatewayAdapterConfig(_AdapterBase):
    """The local WebSocket gateway (DESIGN §7)."""

    type: Literal["gateway"]
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(
        default=8765, ge=0, le=65535, description="TCP port to listen on; 0 picks a free one."
    )
    token: Secret | None = Field(default=None, description="Bearer token clients must present.")
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate; enables TLS.")
    tls_key_file: Path | None = Field(default=None, description="PEM private key for TLS.")
    max_connections_per_peer: int = Field(
        default=8, ge=1, description="Open connections one client address may hold."
    )
    max_messages_per_s: int = Field(
        default=5,
        ge=1,
        description="Messages per second one connection may send (bursts of twice that).",
    )


class DiscordAdapterConfig(_AdapterBase):
    """Discord: Gateway v10 and REST."""

    type: Literal["discord"]
    token: Secret = Field(description="Bot token.")
    gateway_url: str | None = Field(
        default=None,
        description="Gateway WebSocket URL; unset means the one GET /gateway/bot returns "
        "(recommended). The query gets `v=10&encoding=json` either way.",
    )
    api_base: str = Field(default="https://discord.com/api/v10", description="REST base URL.")
    message_content_intent: bool = Field(
        default=True,
        description="Ask for the privileged Message Content intent (enable it in the developer "
        "portal, or the gateway closes with 4014). Without it the bot still sees DMs and "
        "messages that mention it, which is all it answers.",
    )
    zlib_stream: bool = Field(
        default=True,
        description="Ask the gateway for zlib-stream transport compression: a fraction of the "
        "bytes on a slow or metered link, for a little CPU.",
    )


class TelegramAdapterConfig(_AdapterBase):
    """Telegram: Bot API long polling."""

    type: Literal["telegram"]
    token: Secret = Field(description="Bot token from @BotFather.")
    api_base: str = Field(default="https://api.telegram.org", description="Bot API base URL.")
    poll_timeout_s: int = Field(
        default=30, ge=1, le=50, description="Long-poll timeout in seconds."
    )
    delete_webhook: bool = Field(
        default=True,
        description="Remove a webhook set on this bot at start; while one is set, polling "
        "fails with 409 Conflict. Pending updates are kept.",
    )


AdapterConfig = Annotated[
    GatewayAdapterConfig | DiscordAdapterConfig | TelegramAdapterConfig,
    Field(discriminator="type"),
]


_FLEET_ID = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"


class FleetConfig(_Section):
    """Fleet management over MQTT (DESIGN §9); off until the device is provisioned."""

    enabled: bool = Field(default=False, description="Connect to the fleet broker.")
    host: str = Field(default="localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(
        default=8883, ge=1, le=65535, description="Broker TCP port (8883 with TLS, 1883 without)."
    )
    fleet_id: str = Field(
        default="default",
        pattern=_FLEET_ID,
        description="Fleet id in the topic tree: 1-64 of a-z, 0-9 and '-'.",
    )
    device_id: str | None = Field(
        default=None,
        pattern=_FLEET_ID,
        description="Device id in the topic tree; unset derives it from `device.name` "
        "(lowercased, other characters as '-').",
    )
    tls_ca_file: Path | None = Field(
        default=None, description="PEM of the fleet CA; setting it turns TLS on."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate of this device (mutual TLS)."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of this device.")
    command_keys: tuple[Path, ...] = Field(
        default=(),
        description="Ed25519 public keys (PEM, or raw/base64 32 bytes) whose signatures allow "
        "`reboot` and `factory_reset`; a directory means every *.pub and *.pem in it.",
    )
    health_min_interval_s: float = Field(
        default=10.0, ge=1, le=3600, description="Least seconds between two health reports."
    )
    health_snapshot_s: float = Field(
        default=300.0, ge=30, le=86400, description="Seconds between full health snapshots."
    )
    will_delay_s: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Seconds the broker waits before announcing `lost` (MQTT 5 will delay).",
    )
    keepalive_s: int = Field(default=60, ge=5, le=3600, description="MQTT keepalive in seconds.")
    mqtt_version: Literal["5", "3.1.1", "auto"] = Field(
        default="auto", description="MQTT version; auto tries 5 and falls back to 3.1.1."
    )
    outbox_max: int = Field(
        default=500,
        ge=1,
        description="Telemetry messages kept while the broker is away (oldest dropped; count).",
    )


class ApplianceConfig(_Section):
    """The whole config file."""

    device: DeviceConfig = DeviceConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    status: StatusConfig = StatusConfig()
    control: ControlConfig = ControlConfig()
    engine: EngineConfig = EngineConfig()
    skills: SkillsConfig = SkillsConfig()
    tuner: TunerConfig = TunerConfig()
    fleet: FleetConfig = FleetConfig()
    adapters: tuple[AdapterConfig, ...] = Field(
        default=(), description="Chat adapters, one `[[adapters]]` table each, chosen by `type`."
    )


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> ApplianceConfig:
    """Read, parse and validate a config file; raise ConfigError naming file, line and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), [ConfigProblem(str(path), None, "", str(err))]) from err
    return parse_config(text, str(path), read_secret=_secret_reader(path, environ or os.environ))


def parse_config(
    text: str, path: str = "<config>", *, read_secret: SecretReader | None = None
) -> ApplianceConfig:
    """Parse and validate TOML text; `path` is only used in messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, [_syntax_problem(path, err)]) from err
    try:
        return ApplianceConfig.model_validate_json(
            json.dumps(raw, default=str), strict=True, context={"read_secret": read_secret}
        )
    except ValidationError as err:
        lines = key_lines(text)
        problems = [_problem(path, raw, lines, e) for e in err.errors()]
        raise ConfigError(path, problems) from None


def _syntax_problem(path: str, err: tomllib.TOMLDecodeError) -> ConfigProblem:
    match = re.search(r"\(at line (\d+), column \d+\)", str(err))
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err))
    return ConfigProblem(path, int(match[1]) if match else None, "", f"TOML syntax: {message}")


def _problem(
    path: str, raw: dict[str, Any], lines: dict[tuple[str | int, ...], int], error: Any
) -> ConfigProblem:
    keys = _data_path(raw, tuple(error["loc"]))
    line = find_line(lines, keys)
    return ConfigProblem(path, line, _dotted(keys), _message(error, keys))


def _data_path(raw: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The error location as keys of the TOML data (dropping union tags pydantic adds)."""
    keys: list[str | int] = []
    node = raw
    for i, part in enumerate(loc):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            keys.append(part)
            node = node[part]  # type: ignore[index]
        elif i == len(loc) - 1:
            keys.append(part)
    return tuple(keys)


def _dotted(keys: tuple[str | int, ...]) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def _message(error: dict[str, Any], keys: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        guess = difflib.get_close_matches(str(keys[-1]), sorted(_ALL_KEYS), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        return f"unknown key{hint} (see docs/reference/config.md)"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown adapter type; expected one of {', '.join(_ADAPTER_TYPES)}"
    message = str(error["msg"])
    got = error.get("input")
    if kind.endswith("_type") and got is not None and not isinstance(got, dict):
        message += f" (got {_toml_type(got)})"
    return message


def _toml_type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
    }.get(type(value), type(value).__name__)


def _secret_reader(config_path: Path, environ: Mapping[str, str]) -> SecretReader:
    """Read secrets from files (relative to the config) or systemd's credentials directory."""

    def read(kind: str, name: str) -> str:
        if kind == "credential":
            directory = environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ValueError(
                    f"credential {name!r} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
                )
            if "/" in name or name in (".", ".."):
                raise ValueError(f"credential name {name!r} must be a plain file name")
            source = Path(directory) / name
        else:
            source = config_path.parent / name
        try:
            return source.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(
                f"cannot read secret {kind} {str(source)!r}: "
                f"{err.strerror if isinstance(err, OSError) else err}"
            ) from err

    return read


def _collect_keys(model: type[BaseModel], into: set[str]) -> set[str]:
    for name, info in model.model_fields.items():
        into.add(name)
        for sub in _models_in(info.annotation):
            _collect_keys(sub, into)
    return into


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation refers to (through unions, tuples and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


_ALL_KEYS = _collect_keys(ApplianceConfig, set())
_ADAPTER_TYPES = [
    m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in _models_in(AdapterConfig)
]
