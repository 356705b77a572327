"""What runs inside worker processes: face detection and tracking, still images, identification,
and (``engine/``) dlib's inference re-implemented. No asyncio, no sockets, no store."""
