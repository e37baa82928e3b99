"""Backend pool, balancing policies and health checking."""
