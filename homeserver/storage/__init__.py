"""Storage: SQLAlchemy Core stores over one schema for SQLite and PostgreSQL."""
