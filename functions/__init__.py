"""Thin HTTP entry points; every one delegates to ``shared``."""
