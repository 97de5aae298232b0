"""submission stage."""
