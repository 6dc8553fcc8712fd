"""Usage events: validation, pricing, group-commit ingest and reads."""
