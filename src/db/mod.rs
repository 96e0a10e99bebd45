//! The SQLite database: schema, migrations and every query strata runs.
