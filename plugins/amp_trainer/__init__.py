"""Plugin: the ``amp`` trainer (``trainer.py``, a ``protocols.Trainer``) and the ``geo-os pixel-llm train``
command (``train_command.py``: the flags, then the core's ``workflows.train``).

Registering stays cheap: no torch here; the trainer class is a lazy ``"module:attr"`` factory and the
command imports torch inside its body. The trainer's options are the core ``TrainerConfig`` (the
``trainer`` section of a model config), so it registers no options model of its own.
"""

from geometry_os.systems.pixel_llm.plugin_api import hookimpl


@hookimpl
def register_trainers(register):
    """The ``amp`` trainer (mixed precision, DDP under torchrun, exact resume)."""
    register("amp", "geometry_os.plugins.amp_trainer.trainer:PixelLLMTrainer", None)


@hookimpl
def register_commands(cli):
    """The ``train`` command."""
    from geometry_os.plugins.amp_trainer.train_command import train_command

    cli.add_command(train_command)
