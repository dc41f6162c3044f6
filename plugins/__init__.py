"""Default plugins of Geometry OS, installed as ``geometry_os.plugins``."""
