"""Lung nodule detector: chest CT generator, U-Net and candidate CNN, training, evaluation."""
