"""emoflow models."""
