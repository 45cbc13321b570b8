"""The built-in worklist page: its flag store, API, key images, thumbnails and static files."""
