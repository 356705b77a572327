"""Static pages and scripts served by ``ingest.http`` (a package only so that it installs)."""
