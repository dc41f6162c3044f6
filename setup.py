"""Package discovery only (metadata lives in pyproject.toml).

The default plugins are developed in ./plugins and installed as ``geometry_os.plugins``
(see ``package-dir`` in pyproject.toml), so every sub-package found there is listed under that name.
"""

from setuptools import find_packages, setup

core = find_packages(include=["geometry_os", "geometry_os.*"])
plugins = ["geometry_os.plugins"] + [f"geometry_os.plugins.{name}" for name in find_packages("plugins")]
setup(packages=core + plugins)
