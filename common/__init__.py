"""Pieces both `proxy` and `analysis` import: settings, Redis keys, the pair record, errors."""
