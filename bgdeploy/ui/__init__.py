"""Rendering for the terminal (rich) and the web dashboard. Only cli and ui import rich."""
