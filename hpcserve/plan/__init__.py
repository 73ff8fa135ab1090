"""Sizing a model for a site: config, weights, KV cache, parallel layout."""
