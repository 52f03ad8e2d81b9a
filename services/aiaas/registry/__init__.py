"""Versioned, sha256-verified model artifacts (`store.py`) and the model events that announce them
(`announce.py`)."""
