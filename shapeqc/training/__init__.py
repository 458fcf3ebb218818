"""Training a bundle's prior: campaigns across sessions, training curves, quality bars."""
