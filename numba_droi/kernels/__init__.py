"""Kernel sources: plain-Python device helpers and bodies, compiled for both targets on first use."""
