"""Scheduled backups of the SQLite central store (``relay.backup_interval``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from commander_os.config import RelayConfig
from commander_os.relay.central import store_for_config
from commander_os.relay.central._backup import backup_loop
from commander_os.storage import backups


def test_the_relay_backs_itself_up_and_keeps_the_newest(tmp_path: Path) -> None:
    config = RelayConfig(agent_storage_dir=tmp_path / "relay", backup_interval=0.05, backup_keep=2)

    async def run() -> None:
        store = store_for_config(config)
        async with store:
            task = asyncio.create_task(backup_loop(config))
            await asyncio.sleep(0.6)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    found = backups.list_backups(tmp_path / "relay" / "backups")
    assert len(found) == 2
    assert all(info.manifest.kind == "relay" for info in found)
    assert all(backups.verify_backup(info).ok for info in found)
