"""Fracture detection on radiographs of the long bones (CR/DX): generator, model and plugin."""
