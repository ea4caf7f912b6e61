"""ERA adapter package (populated by its issue)."""
