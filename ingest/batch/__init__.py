"""Offline re-processing of stored sessions: the jobs (shared with the live fill), the local
process pool and the Dask cluster, side by side."""
