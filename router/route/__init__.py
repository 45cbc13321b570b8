"""Route: match a complete study's series against the rules and plan its jobs and forwards."""
