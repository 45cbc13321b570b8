"""Assemble: study and series state from received instances, and when a study is complete."""
