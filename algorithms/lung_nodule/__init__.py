"""Lung nodule detection on chest CT: synthetic data, a small 3-D network and its plugin."""
