"""Geometry OS: a host for plugin-built systems; ships the Pixel LLM image-captioning system."""

__version__ = "0.1.0"
