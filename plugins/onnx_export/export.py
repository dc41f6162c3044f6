"""``export_onnx``: a checkpoint folder -> an ONNX folder that ``runtime.OnnxCaptioner`` runs without torch.

The folder holds ``encoder.onnx``, ``decoder_init.onnx`` (cross-attention K/V), ``decoder_step.onnx``
(one token with its self-attention cache), the checkpoint's tokenizer file (copied byte for byte),
``preprocessor_config.json`` (HF ``ViTImageProcessor`` fields: resize, rescale, normalise) and
``manifest.json`` naming every graph's inputs and outputs with their shapes, the special ids and the
model config. Graphs come from ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based
exporter) with dynamic batch and cache-length axes; each is run once with onnxruntime against PyTorch
before the folder is written, and the largest difference is recorded in the manifest.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any

from geometry_os.errors import CheckpointError, GeometryOSError
from geometry_os.systems.pixel_llm.plugin_api import __version__

MANIFEST = "manifest.json"
PREPROCESSOR = "preprocessor_config.json"
GRAPH_FILES = {"encoder": "encoder.onnx", "decoder_init": "decoder_init.onnx", "decoder_step": "decoder_step.onnx"}
FORMAT = "pixel-llm-onnx"
FORMAT_VERSION = 1
OPSET = 18
INSTALL_HINT = "pip install 'geometry-os[onnx]'"
VERIFY_TOLERANCE = 1e-4


def require(*modules: str, purpose: str) -> None:
    """Import ``modules`` or raise one ``GeometryOSError`` line naming the missing one and the extra."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise GeometryOSError(f"{purpose} needs the {name!r} package: {INSTALL_HINT}") from None


def _graph_specs(decoder: Any, image_size: int, n: int, width: int) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Inputs and outputs of each graph: dtype and shape (ints, or names of dynamic axes); ``n`` and
    ``width`` are the encoder's feature count and size."""
    layers, heads, s = decoder.num_layers, decoder.num_heads, image_size
    head_dim = decoder.embed_dim // heads
    cross = len(decoder.cross_attention_layers)

    def t(shape: list[Any], dtype: str = "float32") -> dict[str, Any]:
        return {"dtype": dtype, "shape": shape}

    cross_kv = t([cross, 2, "batch", heads, n, head_dim])
    return {
        "encoder": {
            "inputs": {"pixel_values": t(["batch", 3, s, s])},
            "outputs": {"encoder_hidden_states": t(["batch", n, width])},
        },
        "decoder_init": {
            "inputs": {"encoder_hidden_states": t(["batch", n, width])},
            "outputs": {"cross_kv": cross_kv},
        },
        "decoder_step": {
            "inputs": {
                "input_ids": t(["batch", 1], "int64"),
                "past_self_kv": t([layers, 2, "batch", heads, "past_length", head_dim]),
                "cross_kv": cross_kv,
            },
            "outputs": {
                "logits": t(["batch", decoder.vocab_size]),
                "present_self_kv": t([layers, 2, "batch", heads, "past_length + 1", head_dim]),
            },
        },
    }


def _export(module: Any, args: tuple, path: Path, spec: dict[str, Any], dynamic: dict[str, Any]) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations, not ours
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            verbose=False,
            opset_version=OPSET,
            external_data=False,
            input_names=list(spec["inputs"]),
            output_names=list(spec["outputs"]),
            dynamic_shapes=dynamic,
        )


def _verify(path: Path, args: tuple, expected: tuple, names: list[str]) -> float:
    """Run the graph with onnxruntime on ``args``; the largest absolute difference from ``expected``."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: a.numpy() for name, a in zip(names, args)})
    worst = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    if not worst <= VERIFY_TOLERANCE:
        raise GeometryOSError(f"{path.name}: onnxruntime differs from PyTorch by {worst:.3g} (> {VERIFY_TOLERANCE})")
    return worst


def export_onnx(checkpoint: str | Path, out: str | Path) -> Path:
    """Export the checkpoint folder ``checkpoint`` to the folder ``out`` (written atomically; an existing
    export there is replaced, a folder holding anything else is refused). Returns ``out``.

    Raises ``GeometryOSError`` when the ``onnx`` extra is missing, ``ComponentError`` when an encoder or
    decoder is not one the exporter supports (``graphs.SUPPORTED``), ``CheckpointError`` for a bad
    checkpoint or one without a tokenizer.
    """
    require("onnx", "onnxscript", "onnxruntime", purpose="ONNX export")
    import torch

    from geometry_os.fileio import AtomicFolder, write_json_atomic
    from geometry_os.systems.pixel_llm.plugin_api import (
        CONFIG,
        DatasetConfig,
        GenerationConfig,
        PixelLLM,
        read_checkpoint_config,
        safe_file,
    )

    from .graphs import CrossKVGraph, DecoderStepGraph, EncoderGraph, check_supported

    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    config, data = read_checkpoint_config(folder)
    check_supported(config, str(folder / CONFIG))  # before any weights are read
    entry = data.get("tokenizer")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{folder}: this checkpoint has no tokenizer, so an export could not turn ids into text")
    model, tokenizer = PixelLLM.from_pretrained(folder)
    model = model.float().eval()
    tokenizer_file = safe_file(folder, str(entry.get("file") or "tokenizer.json"))
    assert tokenizer_file is not None  # a required file: safe_file raises when it is missing
    defaults = GenerationConfig()
    special = {}  # as generate_caption picks them: the tokenizer's, else the model config's
    for kind in ("pad", "bos", "eos"):
        name = f"{kind}_token_id"
        values = (getattr(tokenizer, name, None), getattr(config, name, None), getattr(defaults, name))
        special[kind] = next(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))

    batch = torch.export.Dim("batch", min=1, max=4096)
    past = torch.export.Dim("past_length", min=0, max=config.max_seq_len - 1)
    s = config.image_size
    with torch.no_grad():
        pixel_values = torch.rand(2, 3, s, s)
        features = model.encode(pixel_values)
        cross_kv = CrossKVGraph(model.decoder)(features)
        decoder: Any = model.decoder  # the xattn LanguageDecoder
        head_dim = decoder.embed_dim // decoder.num_heads
        past_kv = torch.randn(decoder.num_layers, 2, 2, decoder.num_heads, 3, head_dim)
        input_ids = torch.tensor([[special["bos"]], [min(4, config.vocab_size - 1)]])
        step_out = DecoderStepGraph(decoder)(input_ids, past_kv, cross_kv)
    specs = _graph_specs(decoder, s, features.shape[1], features.shape[2])
    plan = [
        ("encoder", EncoderGraph(model.encoder), (pixel_values,), (features,), {"pixel_values": {0: batch}}),
        ("decoder_init", CrossKVGraph(decoder), (features,), (cross_kv,), {"encoder_hidden_states": {0: batch}}),
        (
            "decoder_step",
            DecoderStepGraph(decoder),
            (input_ids, past_kv, cross_kv),
            step_out,
            {"input_ids": {0: batch}, "past_self_kv": {2: batch, 4: past}, "cross_kv": {2: batch}},
        ),
    ]
    replaces = {MANIFEST, PREPROCESSOR, tokenizer_file.name, *GRAPH_FILES.values()}
    with AtomicFolder(Path(out), replaces=replaces) as tmp:
        verified = {}
        for name, module, args, expected, dynamic in plan:
            path = tmp / GRAPH_FILES[name]
            try:
                _export(module.eval(), args, path, specs[name], dynamic)
            except Exception as exc:  # the exporter's own failure types vary by version
                raise GeometryOSError(
                    f"{folder}: exporting the {name} graph failed: {type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:300]}"
                ) from exc
            verified[name] = _verify(path, args, expected, list(specs[name]["inputs"]))
        shutil.copyfile(tokenizer_file, tmp / tokenizer_file.name)
        image = DatasetConfig(**config.image_options())
        crop = image.resize == "shorter_crop"  # timm's eval transform: shorter side, then a centre crop
        write_json_atomic(
            tmp / PREPROCESSOR,
            {
                "image_processor_type": "ViTImageProcessor",
                "do_convert_rgb": True,
                "do_resize": True,
                "size": {"shortest_edge": math.floor(s / image.crop_pct)} if crop else {"height": s, "width": s},
                "resample": 3 if image.interpolation == "bicubic" else 2,  # PIL.Image.BICUBIC / BILINEAR
                "do_center_crop": crop,
                "crop_size": {"height": s, "width": s},
                "do_rescale": True,
                "rescale_factor": image.rescale_factor,
                "do_normalize": True,
                "image_mean": list(image.mean),
                "image_std": list(image.std),
            },
        )
        write_json_atomic(
            tmp / MANIFEST,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "geometry_os_version": __version__,
                "opset": OPSET,
                "graphs": {name: {"file": GRAPH_FILES[name], **specs[name]} for name in GRAPH_FILES},
                "special_ids": special,
                "generation": config.generation,  # the model's default GenerationConfig fields
                "vocab_size": config.vocab_size,
                "max_seq_len": config.max_seq_len,
                "tokenizer": {"component": entry["component"], "file": tokenizer_file.name},
                "preprocessing": {"file": PREPROCESSOR, "max_image_pixels": image.max_image_pixels},
                "verified_max_abs_diff": verified,
                "source_checkpoint": str(folder),
                "model": config.model_dict(),
            },
        )
    return Path(out)
