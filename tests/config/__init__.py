"""Tests of the routing YAML: loading, error locations, the shipped default and examples."""
