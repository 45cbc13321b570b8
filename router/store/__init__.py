"""Durable state shared by every stage: the database, its versioned schema (migrations) and the
one work queue that jobs, prior requests, dispatches and deliveries share."""
