"""Federated training across sites with NVIDIA FLARE: the job and the site's client."""
