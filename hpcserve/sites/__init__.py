"""Cluster descriptions: schema, loading and validation of site files, their docs."""
