"""Findings to worklist priority and reason, and the channels that deliver it."""
