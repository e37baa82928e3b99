"""The asyncio layer: the only code in ftplb that touches sockets."""
