"""The benchmark database: SQLite or PostgreSQL, schema and migrations, merges, row checks,
and which calibration answers a question."""
