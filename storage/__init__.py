"""Durable session storage: files under the data folder plus a SQLite index."""
