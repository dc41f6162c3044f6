"""Systems hosted by Geometry OS."""
