"""bench entry points; see __main__.py."""
