"""Pure bytes and PyAV: the incremental WebM reader, decoding, image headers, remuxing,
rendering and overlays. No store, no asyncio."""
