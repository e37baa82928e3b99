"""Routed mode's kernel data path: an nftables table of ftplb's own.

The table is the `ftplb render nftables` output for the running config, loaded
with `nft -f -`. Its first lines replace an older copy atomically (a table left
by a killed ftplb included), a reload loads it again, and a clean stop deletes
it. Passive data then never enters Python.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from ftplb.config import Config
from ftplb.render import NFT_TABLE, RenderOptions, nftables

log = logging.getLogger("ftplb.kernel")


class KernelDataPathError(Exception):
    pass


async def _nft(script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    proc = await asyncio.create_subprocess_exec(
        nft,
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise KernelDataPathError(f"nft -f: {err.decode(errors='replace').strip()}")


async def install(config: Config) -> None:
    await _nft(nftables(config, RenderOptions()))
    log.info("kernel data path: nftables table inet %s loaded", NFT_TABLE)


async def remove() -> None:
    # `add` first: deleting a table that is not there would fail.
    await _nft(f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
    log.info("kernel data path: nftables table inet %s removed", NFT_TABLE)
