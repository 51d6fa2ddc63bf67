"""Data pipeline: MSD reading and validation, preprocessing and caching, patches, demo data."""
