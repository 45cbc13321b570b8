"""The DICOM node and pipeline: receive, spool, assemble, route, run, dispatch, serve."""
