"""Calibrating a bundle: threshold profiles and the quality estimator on clean masks and seeded corruptions of them."""
