"""ClickHouse storage: the one client module and the migration runner."""
