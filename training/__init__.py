"""What builds the shipped models (not shipped): synthetic data, networks, training, evaluation."""
