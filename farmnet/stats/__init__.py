"""Statistics: every task run, finished job and farm event, kept in PostgreSQL."""
