"""The HTTP API: study, job and dead-letter views, health, metrics, retries."""
