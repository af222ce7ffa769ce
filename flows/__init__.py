"""Prefect flows of `previews`: orchestration only (tasks, retries, artifacts, run names)."""
