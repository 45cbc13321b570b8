"""Receive: the DICOM node (C-ECHO, C-STORE), ingest checks and the durable spool."""
