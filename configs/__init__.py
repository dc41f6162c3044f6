"""Training recipes shipped with the package as ``geometry_os.configs`` (TOML files read with ``train --config``).

The files live in the repository's top-level ``configs/`` folder, where the docs point; installs map the folder to
this package so that code finds the same files through :func:`importlib.resources.files`.
"""
