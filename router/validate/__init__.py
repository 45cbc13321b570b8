"""Local validation before go-live: ``radrouter validate`` (issue: operating it)."""
