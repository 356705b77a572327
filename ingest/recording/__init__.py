"""One recording session from ``start`` to its end: its state, its chunks and snapshots, how it
ends, and imports of existing files through the same chunk path."""
