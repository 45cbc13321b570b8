"""Pulmonary embolism flagging on contrast-enhanced chest CT (reference plugin, synthetic data)."""
