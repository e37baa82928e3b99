"""The sans-IO protocol core: bytes in, values out; no sockets, no asyncio, no clock."""
