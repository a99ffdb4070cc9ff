"""Uploaded modules: validated, stored by content, compiled once."""
