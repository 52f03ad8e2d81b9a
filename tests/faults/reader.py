"""The fault suite's results reader: what an application reading results with the client sees.

    python -m tests.faults.reader --group G --dir D      (Kafka settings from AIAAS_KAFKA_*)

It reads `<prefix>.vision.results` with `AiaasClient.results(group_id=G, seen=SeenFile(D/seen.ids))`
and appends one line per result it is handed, `<job id> <status>`, to `D/received.txt` (flushed
per line). It may be killed at any moment and started again with the same arguments: the group's
committed offsets and the seen file make it resume. A job id on two lines of received.txt is a
duplicate the client let through. SIGTERM ends it cleanly (final commit, leaves the group).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from aiaas.client.client import AiaasClient, SeenFile
from aiaas.settings import KafkaSettings


async def read(group: str, folder: Path) -> None:
    """Read until cancelled."""
    folder.mkdir(parents=True, exist_ok=True)
    client = AiaasClient(KafkaSettings())  # results() needs no producer: the client is not started
    with SeenFile(folder / "seen.ids") as seen, (folder / "received.txt").open("a") as out:
        print(f"results reader ready: group {group}, {len(seen)} job ids already seen", flush=True)
        async for result in client.results("vision", group_id=group, seen=seen):
            out.write(f"{result.job_id} {result.status}\n")
            out.flush()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    task = asyncio.create_task(read(args.group, args.dir))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        print("results reader stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
