"""Where the operator's broker, fleet and keys are: flags, then environment, then a TOML file.

Each setting is taken from the first of: the command-line flag, the environment variable, the
operator file (`$FLEET_CONFIG`, else `~/.config/fleet/operator.toml`). The file is optional:

    broker = "mqtt.example.net:8883"
    fleet = "shop-eu"
    ca = "fleet-ca/ca.crt"                 # relative paths are relative to this file
    cert = "fleet-ca/operators/alice.crt"
    key = "fleet-ca/operators/alice.key"
    sign_key = "fleet-ca/command-signing.key"
    ca_dir = "fleet-ca"
    protocol = "5"                         # or "3.1.1"

Unknown keys are errors. Resolution is pure (`resolve`); `load` reads the file. Key files are
only ever named here, never read.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ApplianceError

ENV = {
    "broker": "FLEET_BROKER",
    "fleet": "FLEET_ID",
    "ca": "FLEET_CA",
    "cert": "FLEET_CERT",
    "key": "FLEET_KEY",
    "sign_key": "FLEET_SIGN_KEY",
    "ca_dir": "FLEET_CA_DIR",
    "protocol": "FLEET_MQTT_PROTOCOL",
}
CONFIG_ENV = "FLEET_CONFIG"
DEFAULT_FILE = Path("~/.config/fleet/operator.toml")
PATH_KEYS = ("ca", "cert", "key", "sign_key", "ca_dir")
TLS_PORT = 8883
PLAIN_PORT = 1883


class OperatorConfigError(ApplianceError, ValueError):
    """The operator's settings are missing or invalid; nothing was sent."""

    code = "operator_config_invalid"


class OperatorSettings(BaseModel):
    """The resolved operator settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str | None = Field(None, description="HOST[:PORT] of the MQTT broker")
    fleet: str | None = Field(None, description="fleet id (the topic level after appliance/v1)")
    ca: Path | None = Field(None, description="fleet CA certificate (PEM); enables TLS")
    cert: Path | None = Field(None, description="this operator's certificate (PEM)")
    key: Path | None = Field(None, description="this operator's private key (PEM)")
    sign_key: Path | None = Field(None, description="Ed25519 command signing key (PEM)")
    ca_dir: Path | None = Field(None, description="the fleet CA directory (fleet ca ...)")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")

    def require(self, *names: str) -> None:
        """OperatorConfigError naming each of `names` that has no value."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            hints = ", ".join(f"--{n.replace('_', '-')} or ${ENV[n]}" for n in missing)
            raise OperatorConfigError(f"Missing {hints} (or set it in the operator file)")

    def broker_address(self) -> tuple[str, int]:
        """(host, port) of the broker; the port defaults to 8883 with TLS, else 1883."""
        self.require("broker")
        assert self.broker is not None
        return parse_broker(self.broker, tls=self.ca is not None)


def parse_broker(value: str, *, tls: bool) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or `mqtt(s)://host:port` as (host, port)."""
    text = value.strip()
    for scheme in ("mqtts://", "mqtt://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host or "/" in host:
        raise OperatorConfigError(f"Broker {value!r} is not HOST[:PORT]")
    if not port_text:
        return host, TLS_PORT if tls else PLAIN_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise OperatorConfigError(f"Broker port in {value!r} is not 1-65535")
    return host, int(port_text)


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file_values: Mapping[str, Any],
    file_dir: Path | None = None,
) -> OperatorSettings:
    """Flags over environment over file; relative file paths resolved against `file_dir`."""
    values: dict[str, Any] = {}
    unknown = sorted(set(file_values) - set(OperatorSettings.model_fields))
    if unknown:
        raise OperatorConfigError(f"Unknown key(s) in the operator file: {', '.join(unknown)}")
    for key in OperatorSettings.model_fields:
        if flags.get(key) is not None:
            values[key] = flags[key]
        elif env.get(ENV[key]):
            values[key] = env[ENV[key]]
        elif file_values.get(key) is not None:
            value = file_values[key]
            if key in PATH_KEYS and file_dir is not None and isinstance(value, str):
                value = file_dir / Path(value).expanduser()
            values[key] = value
    try:
        return OperatorSettings.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OperatorConfigError(f"Operator setting {where}: {first['msg']}") from None


def load(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> OperatorSettings:
    """Resolve the settings, reading the operator file if there is one (blocking I/O)."""
    env = os.environ if env is None else env
    path = Path(env.get(CONFIG_ENV) or DEFAULT_FILE).expanduser()
    file_values: dict[str, Any] = {}
    if path.is_file():
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise OperatorConfigError(f"Operator file {path}: {err}") from err
    elif env.get(CONFIG_ENV):
        raise OperatorConfigError(f"Operator file {path} (from ${CONFIG_ENV}) does not exist")
    return resolve(flags, env, file_values, path.parent)
