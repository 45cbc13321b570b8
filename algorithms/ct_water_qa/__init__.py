"""CT water-phantom constancy test (quality control)."""
