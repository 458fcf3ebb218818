"""A bundle: loading and trust, metadata, the datasets and datalists it trains and calibrates on."""
