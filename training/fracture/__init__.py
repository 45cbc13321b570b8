"""Fracture detection: radiograph generator, network, training, evaluation."""
