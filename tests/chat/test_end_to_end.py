"""The real `appliance run` process against a WebSocket client, a fake Discord and a fake
Telegram on loopback: engine-made replies, pairing, and a kill -9 between accept and reply."""

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from appliance.control import request
from appliance.errors import ControlError
from tests.fakes.discord import TOKEN as DISCORD_TOKEN
from tests.fakes.discord import USER_ID, FakeDiscord
from tests.fakes.telegram import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent.parent
MODEL = ROOT / "models" / "minilm" / "minilm-l6-v2-int8.json"
GATEWAY_TOKEN = "e2e-gateway-token"
QUESTION = "which model do you run?"
ENGINE_REPLY = "I run minilm-l6-v2-int8"  # the model_info skill, reached only through the engine


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(directory: Path, discord: FakeDiscord, telegram: FakeTelegram, port: int) -> Path:
    config = directory / "config.toml"
    config.write_text(
        f'[device]\nname = "e2e-pi"\ndata_dir = "{directory}/data"\n'
        f'[control]\nsocket_path = "{directory}/control.sock"\n'
        f'[engine]\nmodel_path = "{MODEL}"\nnum_threads = 1\n'
        "[[adapters]]\n"
        f'type = "gateway"\nport = {port}\ntoken = "{GATEWAY_TOKEN}"\n'
        "[[adapters]]\n"
        f'type = "discord"\ntoken = "{DISCORD_TOKEN}"\napi_base = "{discord.api_base}"\n'
        f'dm_policy = "allowlist"\nallow_from = ["{USER_ID}"]\n'
        "[[adapters]]\n"
        f'type = "telegram"\ntoken = "{TELEGRAM_TOKEN}"\napi_base = "{telegram.base_url}"\n'
        "poll_timeout_s = 1\n",
        encoding="utf-8",
    )
    return config


class Appliance:
    """`appliance run --config PATH` as a child process."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.config, self.socket = config, directory / "control.sock"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "appliance",
            "run",
            "--config",
            str(self.config),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(400):
            assert self.proc.returncode is None, await self._stderr()
            try:
                report = await asyncio.to_thread(request, self.socket, "status")
                if report["state"] == "ready":
                    return
            except ControlError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("the appliance did not become ready: " + await self._stderr())

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def cli(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "appliance",
            *args,
            "--config",
            str(self.config),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    async def _stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        if self.proc.returncode is None:
            self.proc.kill()
        return (await self.proc.stderr.read()).decode()[-3000:]


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeDiscord, FakeTelegram]]:
    async with FakeDiscord() as discord, FakeTelegram() as telegram:
        yield discord, telegram


async def until(predicate: Callable[[], Any], timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def _outbox_depth(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM queue_items WHERE queue LIKE 'chat.outbox.%'"
        ).fetchone()
    return int(count)


async def outbox_becomes(db: Path, depth: int, timeout_s: float = 30.0) -> None:
    """Until the appliance's outbox holds `depth` replies, read from outside the process."""
    for _ in range(int(timeout_s / 0.05)):
        if await asyncio.to_thread(_outbox_depth, db) == depth:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the outbox never held {depth} replies")


async def test_every_platform_gets_an_engine_made_reply_and_a_stranger_a_pairing_code(
    short_dir: Path, fakes: tuple[FakeDiscord, FakeTelegram]
) -> None:
    discord, telegram = fakes
    port = free_port()
    config = await asyncio.to_thread(write_config, short_dir, discord, telegram, port)
    appliance = Appliance(config, short_dir)
    await appliance.start()
    try:
        # The local gateway.
        url = f"ws://127.0.0.1:{port}/?token={GATEWAY_TOKEN}"
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "message", "id": "1", "text": QUESTION}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "reply" and reply["intent"] == "model_info"
        assert reply["text"].startswith(ENGINE_REPLY)

        # Discord: an allowlisted user's DM.
        await until(lambda: discord.connected and discord.identifies)
        sent = await discord.inject_message(QUESTION)
        channel = sent["channel_id"]
        await until(lambda: discord.messages.get(channel))
        [posted] = discord.messages[channel]
        assert posted["content"].startswith(ENGINE_REPLY)
        assert posted["message_reference"]["message_id"] == sent["id"]

        # Telegram: a stranger's DM gets only a pairing code; approved, they get answers.
        await until(lambda: telegram.polls())
        telegram.push("update_private_text")
        await until(lambda: telegram.sent)
        [pairing] = telegram.sent
        assert ENGINE_REPLY not in pairing["text"]
        code = pairing["text"].split("Pairing code: ")[1][:8]
        status, out = await appliance.cli("pair", "approve", code)
        assert status == 0, out
        assert "as owner" in out
        update = telegram.push("update_private_text")
        update["message"]["text"] = QUESTION
        await until(lambda: len(telegram.sent) == 2)
        assert telegram.sent[1]["text"].startswith(ENGINE_REPLY)
    finally:
        await appliance.stop()


async def test_kill_9_between_accept_and_reply_loses_nothing_and_posts_once(
    short_dir: Path, fakes: tuple[FakeDiscord, FakeTelegram]
) -> None:
    discord, telegram = fakes
    config = await asyncio.to_thread(write_config, short_dir, discord, telegram, free_port())
    appliance = Appliance(config, short_dir)
    db = short_dir / "data" / "appliance.db"
    await appliance.start()
    try:
        await until(lambda: discord.connected and discord.identifies)
        discord.hold_responses = True  # the first reply is posted, but its response never comes
        first = await discord.inject_message(QUESTION)
        await until(lambda: len(discord.posts) == 1)
        second = await discord.inject_message("how hot is the cpu?")
        # Accepted and answered: its reply waits in the outbox behind the one in flight.
        await outbox_becomes(db, 2)
        await appliance.kill()
        discord.release()

        await appliance.start()
        channel = first["channel_id"]
        await until(lambda: len(discord.messages.get(channel, [])) == 2)
        await outbox_becomes(db, 0)
        await asyncio.sleep(0.5)  # time for a duplicate to show up, if there were one
    finally:
        await appliance.stop()
    messages = discord.messages[channel]
    assert [m["message_reference"]["message_id"] for m in messages] == [first["id"], second["id"]]
    nonces = [p["nonce"] for p in discord.posts]
    assert len(nonces) == 3 and nonces[0] == nonces[1], "the reply in flight was sent again"
    assert all(p["enforce_nonce"] is True for p in discord.posts)


async def test_kill_9_with_a_telegram_reply_in_flight_sends_it_at_most_once_more(
    short_dir: Path, fakes: tuple[FakeDiscord, FakeTelegram]
) -> None:
    discord, telegram = fakes
    config = await asyncio.to_thread(write_config, short_dir, discord, telegram, free_port())
    appliance = Appliance(config, short_dir)
    await appliance.start()
    try:
        await until(lambda: telegram.polls())
        telegram.push("update_private_text")  # a stranger: the reply is a pairing code
        await until(lambda: telegram.sent)
        code = telegram.sent[0]["text"].split("Pairing code: ")[1][:8]
        status, out = await appliance.cli("pair", "approve", code)
        assert status == 0, out

        telegram.hold_responses = True  # Telegram takes the reply but the answer never comes
        update = telegram.push("update_private_text")
        update["message"]["text"] = QUESTION
        await until(lambda: len(telegram.sent) == 2)
        await appliance.kill()
        telegram.release()

        await appliance.start()
        await outbox_becomes(short_dir / "data" / "appliance.db", 0)
        await asyncio.sleep(0.5)
    finally:
        await appliance.stop()
    answers = [m for m in telegram.sent if m["text"].startswith(ENGINE_REPLY)]
    assert len(answers) == 2, "Telegram has no idempotency key: sent again once, not more"
    assert len(telegram.sent) == 3
