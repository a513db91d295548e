"""Vantage core: cameras, data, and the models (tokenizer, NVS, reconstruction).

Nothing in ``core`` imports the viewer."""
