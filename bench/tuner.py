"""The hardware-profile tuner on the built-in model: tuned against the runtime's default.

Both numbers come from the same tuning run: the default (1 thread, XNNPACK, one message per
call) and the winner are measured again interleaved, and the tuner keeps the default unless
the winner beats it by more than 3 %, so a ratio of 1.00 means "the default is already best
here". Run twice: with one core left free (what the appliance does) and with every core.
"""

from __future__ import annotations

import asyncio
import dataclasses

from appliance.bootstrap import checkout_dir, dev_config, tuner_settings
from appliance.clock import SystemClock
from appliance.config import ApplianceConfig
from appliance.hardware.service import tune_model
from bench.report import Result

CONFIG = dev_config(ApplianceConfig(), checkout_dir())


def _tuned(use_all_cores: bool) -> Result:
    settings = dataclasses.replace(tuner_settings(CONFIG), use_all_cores=use_all_cores)
    run = asyncio.run(
        tune_model(
            CONFIG.engine.model_path,
            settings=settings,
            reason="make bench",
            clock=SystemClock(),
        )
    )
    profile = run.profile
    cores = "every core" if use_all_cores else "one core left free"
    return Result(
        f"tuner: tuned throughput, {cores}",
        profile.chosen.throughput_per_s,
        profile.default.throughput_per_s,
        "msg/s",
        True,
        f"baseline: runtime default; chose {profile.name} on {run.machine.board} "
        f"({len(run.measured)} candidates; {profile.note})",
    )


def run() -> list[Result]:
    """Tuned against default throughput on the built-in model."""
    return [_tuned(use_all_cores=False), _tuned(use_all_cores=True)]
