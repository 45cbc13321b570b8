"""AI inference plugins, their contract, registry and model runtime."""
