"""The live process boundary: the server's scheduler of worker processes, the messages between
them, the worker's own side, and the fill of skipped frames after stop."""
