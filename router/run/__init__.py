"""Run: the job queue, the workers, series loading and prior retrieval."""
