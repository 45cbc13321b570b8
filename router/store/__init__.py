"""Durable state shared by every stage: the database, its schema and migrations."""
