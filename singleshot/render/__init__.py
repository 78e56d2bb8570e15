"""Drawings written as image files (matplotlib Agg, no display)."""
