"""The DICOM node and its pipeline, one package per stage in the order data flows: receive, assemble, route, run, deliver; then the worklist page, the HTTP API and the CLI."""
