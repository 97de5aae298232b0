"""Evaluation: sandbox launcher (host), runner and held-out evaluation (inside the sandbox).

Only ``interface`` is imported by submissions; nothing here imports torch at package import.
"""
