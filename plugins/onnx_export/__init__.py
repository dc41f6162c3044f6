"""Built-in plugin: ONNX export (``geo-os pixel-llm export``) and the onnxruntime runner
(``geo-os pixel-llm caption-onnx``).

Python: ``geometry_os.plugins.onnx_export.export.export_onnx(checkpoint, out)`` and
``geometry_os.plugins.onnx_export.runtime.OnnxCaptioner(folder)``. Both need the ``onnx`` extra
(``pip install 'geometry-os[onnx]'``); without it each is one error line saying so. This module imports
only click, so registering the commands stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geometry_os.systems.pixel_llm.plugin_api import hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add the ``export`` and ``caption-onnx`` commands to the ``pixel-llm`` command group ``cli``."""
    from .commands import caption_onnx_command, export_command

    cli.add_command(export_command)
    cli.add_command(caption_onnx_command)
