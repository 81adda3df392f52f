import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from appliance.store import Store

ROOT = Path(__file__).resolve().parents[2]
BATCH = 50

_ENQUEUER = """
import asyncio, sys
from pathlib import Path
from appliance.store import Store

async def main(path, batch_size):
    store = await Store.open(path)
    queue = store.queue("crash", max_items=10_000_000)
    print("ready", flush=True)
    batch = 0
    while True:
        items = [(f"{batch}:{n}", f"{batch}:{n}") for n in range(batch_size)]
        await queue.put_many(items, now=0.0)
        print(batch, flush=True)
        batch += 1

asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
"""


def _run_and_kill(path: Path, delay_s: float) -> list[int]:
    """Run the enqueuer, SIGKILL it after `delay_s`, return the batches it reported committed."""
    child = subprocess.Popen(
        [sys.executable, "-c", _ENQUEUER, str(path), str(BATCH)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    # A line cut short by the kill is not a report of a commit.
    return [int(line) for line in out.decode().split("\n")[:-1]]


async def _batches_in(path: Path) -> Counter[int]:
    async with await Store.open(path) as store:
        items = await store.queue("crash").peek(10_000_000, now=0.0)
    return Counter(int(item.text.split(":")[0]) for item in items)


def test_a_killed_producer_loses_no_committed_batch_and_leaves_none_partial(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    for attempt in range(3):
        path = tmp_path / f"state-{attempt}.db"
        committed = _run_and_kill(path, rng.uniform(0.03, 0.1))
        found = asyncio.run(_batches_in(path))
        assert set(committed) <= set(found)
        assert all(count == BATCH for count in found.values())
        assert set(found) <= set(committed) | {len(committed)}  # at most the one in flight
