"""Compatibility alias: submissions written against ``prism_challenge`` keep working unmodified."""
