"""Compatibility alias for ``prism.evaluator`` (only the miner-facing interface is re-exported)."""
