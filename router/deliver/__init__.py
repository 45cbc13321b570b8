"""Deliver: write results as DICOM, send them to destinations, notify the worklist channels."""
