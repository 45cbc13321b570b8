"""The admin page: what is in flight, what failed, which rule did what, the algorithms, and the
configuration (view, check against recent studies, diff, apply), for the admin role."""
