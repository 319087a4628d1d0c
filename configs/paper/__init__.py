"""Presets at paper scale, one per published recipe; each file cites its source (repository file and flag)."""
