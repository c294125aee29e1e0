"""emoflow pipeline."""
