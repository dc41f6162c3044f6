"""Greedy captioning with onnxruntime from an exported folder alone: numpy, onnxruntime, Pillow and the
tokenizer's own package (``tokenizers`` for ``bpe``); this module imports no torch.

Decoding follows ``GenerationConfig`` and the ``greedy`` strategy: ``<bos>`` first, the most likely
token at each step, a row leaves the batch at its ``<eos>``, ``max_length`` / ``max_new_tokens`` cap
the length (and the decoder's ``max_seq_len``), ``min_length`` bans ``<eos>`` before it,
``suppress_tokens`` are never generated (the ids the tokenizer cannot decode are added, as
``generate_caption`` does). Any other option (sampling, beams, penalties, n-gram bans, attentions) is
refused with one line: the exported runner does not implement it. Images are read and preprocessed as
in training (``images.load_image``, a bilinear resize to the model's size, /255, mean/std).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geometry_os.errors import CheckpointError, ComponentError, ConfigError, GeometryOSError, one_line
from geometry_os.fileio import parse_json, read_utf8
from geometry_os.systems.pixel_llm.plugin_api import (
    CaptionResult,
    DataError,
    GenerationConfig,
    load_image,
    loader_threads,
    read_ahead,
    undecodable_ids,
    usable_cpus,
)

from .export import FORMAT, FORMAT_VERSION, GRAPH_FILES, MANIFEST, require

MAX_JSON_BYTES = 64 * 1024 * 1024
# GenerationConfig fields the runner honours; every other field must keep its default.
SUPPORTED_OPTIONS = (
    "max_length",
    "max_new_tokens",
    "min_length",
    "suppress_tokens",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "return_dict_in_generate",
    "output_scores",
    "strategy",
)


def check_generation(config: GenerationConfig) -> None:
    """Refuse (``ConfigError``, one line) options the exported runner does not implement."""
    defaults = GenerationConfig()
    if config.strategy_name != "greedy":
        raise ConfigError(f"the ONNX runner decodes greedily only; got strategy {config.strategy_name!r}")
    changed = [
        name
        for name in GenerationConfig.model_fields
        if name not in SUPPORTED_OPTIONS and getattr(config, name) != getattr(defaults, name)
    ]
    if changed:
        raise ConfigError(
            f"the ONNX runner does not support {', '.join(changed)}; it supports greedy decoding "
            "with max_length, max_new_tokens, min_length and suppress_tokens"
        )


@dataclass
class OnnxGeneration:
    """Greedy result for B images: ``sequences`` (B, T) int64 from ``<bos>``, ``<pad>`` after ``<eos>``;
    ``sequence_scores`` (B,) sum of the generated tokens' log-probs; ``scores_penalised`` the same
    divided by the caption's length after ``<bos>`` (``length_penalty`` 1, as greedy reports it);
    ``texts`` the decoded captions."""

    sequences: np.ndarray
    sequence_scores: np.ndarray
    scores_penalised: np.ndarray
    texts: list[str]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: file too large for a JSON config ({path.stat().st_size} bytes)")
    return parse_json(read_utf8(path, CheckpointError), path, CheckpointError)


def _member(folder: Path, name: Any, source: Path) -> Path:
    """``folder/name`` for a plain file name that stays inside ``folder`` (no paths, no symlinks out)."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(f"{source}: file names must be plain names inside the folder, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing {name}")
    if folder.resolve() not in path.resolve().parents:
        raise CheckpointError(f"{path}: points outside the export folder; refusing to read it")
    return path


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    shifted = x - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class OnnxCaptioner:
    """An exported folder, loaded: ``OnnxCaptioner(folder, threads=None, providers=None)``.

    ``threads``: onnxruntime intra-op threads (None: its default); ``providers``: onnxruntime execution
    providers in order of preference (None: ``["CPUExecutionProvider"]``).

    Raises ``GeometryOSError`` when onnxruntime is missing (naming the ``onnx`` extra) and
    ``CheckpointError`` for a folder that is not a readable export.
    """

    def __init__(self, folder: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        require("onnxruntime", purpose="the ONNX runner")
        import onnxruntime as ort

        self.folder = folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: export folder not found")
        manifest_path = folder / MANIFEST
        m = _read_json(manifest_path)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise CheckpointError(f"{manifest_path}: not a Pixel LLM ONNX export (expected format={FORMAT!r})")
        version = m.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(
                f"{manifest_path}: format_version {version!r} is not one this version reads ({FORMAT_VERSION})"
            )
        self.manifest = m
        try:
            special = m["special_ids"]
            self.pad_id, self.bos_id, self.eos_id = (int(special[k]) for k in ("pad", "bos", "eos"))
            self.vocab_size, self.max_seq_len = int(m["vocab_size"]), int(m["max_seq_len"])
            step_inputs = m["graphs"]["decoder_step"]["inputs"]["past_self_kv"]["shape"]
            self.cache_shape = (int(step_inputs[0]), int(step_inputs[3]), int(step_inputs[5]))
            graph_files = {name: m["graphs"][name]["file"] for name in GRAPH_FILES}
            tokenizer_entry, preprocessing = m["tokenizer"], m["preprocessing"]
            self.max_image_pixels = int(preprocessing["max_image_pixels"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{manifest_path}: missing or invalid field ({one_line(exc)})") from None
        self._read_preprocessing(_member(folder, preprocessing.get("file"), manifest_path))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # image files are read ahead on the CPUs onnxruntime leaves idle (its default uses them all)
        on_cpu = list(providers or ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        self.loader_threads = loader_threads("cpu" if on_cpu else "gpu", threads or usable_cpus())
        self.sessions = {}
        for name, file in graph_files.items():
            path = _member(folder, file, manifest_path)
            try:
                self.sessions[name] = ort.InferenceSession(
                    str(path), options, providers=list(providers or ["CPUExecutionProvider"])
                )
            except Exception as exc:  # onnxruntime raises its own exception types for bad files
                raise CheckpointError(f"{path}: onnxruntime cannot load it: {one_line(exc)[:300]}") from None
        self.tokenizer = self._load_tokenizer(tokenizer_entry, manifest_path)

    def _read_preprocessing(self, path: Path) -> None:
        p = _read_json(path)
        try:
            crop = p.get("do_center_crop", False) is True
            self.image_size = (
                (int(p["crop_size"]["height"]), int(p["crop_size"]["width"]))
                if crop
                else (int(p["size"]["height"]), int(p["size"]["width"]))
            )
            self.shortest_edge = int(p["size"]["shortest_edge"]) if crop else None
            if p.get("resample", 2) not in (2, 3):
                raise ValueError(f"resample={p.get('resample')!r} (2 bilinear or 3 bicubic)")
            self.resample = int(p.get("resample", 2))
            self.mean = np.asarray(p["image_mean"], dtype=np.float32).reshape(3, 1, 1)
            self.std = np.asarray(p["image_std"], dtype=np.float32).reshape(3, 1, 1)
            self.rescale = float(p["rescale_factor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: missing or invalid field ({one_line(exc)})") from None
        if not (self.std > 0).all() or min(self.image_size) < 1:
            raise CheckpointError(f"{path}: image size and image_std must be positive")

    def _load_tokenizer(self, entry: Any, source: Path) -> Any:
        from geometry_os.systems.pixel_llm.plugin_api import get_component

        if not isinstance(entry, Mapping) or not isinstance(entry.get("component"), str):
            raise CheckpointError(f"{source}: 'tokenizer' must be an object with 'component' and 'file'")
        path = _member(self.folder, entry.get("file"), source)
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: file too large for a tokenizer ({path.stat().st_size} bytes)")
        try:
            cls: Any = get_component("tokenizer", entry["component"]).load()
        except ComponentError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        try:
            return cls.load(str(path))
        except GeometryOSError:
            raise
        except Exception as exc:  # a tokenizer's own error type: one line naming the file
            raise CheckpointError(f"{path}: cannot load tokenizer: {one_line(exc)[:200]}") from None

    # -- the graphs ---------------------------------------------------------------------------------

    def preprocess(self, image: Any) -> np.ndarray:
        """An RGB ``PIL.Image`` -> (3, H, W) float32 as ``data.build_transform`` makes it: Pillow's
        bilinear or bicubic resize (what torchvision's ``Resize`` runs on PIL images) to H x W, or of
        the shorter side followed by a centre crop; x/255 (times rescale_factor*255 when that is not
        1); (x - mean) / std."""
        from PIL import Image

        height, width = self.image_size
        resample = Image.Resampling.BICUBIC if self.resample == 3 else Image.Resampling.BILINEAR
        if self.shortest_edge is None:
            image = image.resize((width, height), resample)
        else:  # torchvision: shorter side to the edge, the longer int(edge * long / short); round() centring
            w, h = image.size
            n = self.shortest_edge
            size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
            image = image.resize(size, resample)
            top, left = int(round((size[1] - height) / 2.0)), int(round((size[0] - width) / 2.0))
            image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * np.float32(1.0 / 255)
        if abs(self.rescale * 255 - 1) >= 1e-12:
            array = array * np.float32(self.rescale * 255)
        return (array - self.mean) / self.std

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> encoder_hidden_states (B, N, D)."""
        return self.sessions["encoder"].run(None, {"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})[0]

    def cross_kv(self, encoder_hidden_states: np.ndarray) -> np.ndarray:
        """(B, N, D) -> (cross layers, 2, B, heads, N, head_dim)."""
        return self.sessions["decoder_init"].run(None, {"encoder_hidden_states": encoder_hidden_states})[0]

    def empty_cache(self, batch: int) -> np.ndarray:
        """An empty self-attention cache for ``batch`` rows: float32 zeros (layers, 2, batch, heads, 0, head_dim)."""
        layers, heads, head_dim = self.cache_shape
        return np.zeros((layers, 2, batch, heads, 0, head_dim), dtype=np.float32)

    def step(self, input_ids: np.ndarray, past: np.ndarray, cross_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """input_ids (B, 1) int64 at position ``past.shape[4]`` -> (logits (B, vocab), cache one longer)."""
        logits, present = self.sessions["decoder_step"].run(
            None, {"input_ids": input_ids.astype(np.int64), "past_self_kv": past, "cross_kv": cross_kv}
        )
        return logits, present

    # -- decoding -----------------------------------------------------------------------------------

    def _generation(
        self, config: GenerationConfig | Mapping[str, Any] | None, overrides: dict[str, Any]
    ) -> GenerationConfig:
        if isinstance(config, GenerationConfig):  # only what the caller set, as generate_caption reads it
            data = config.model_dump(include=config.model_fields_set)
        else:
            data = dict(config or {})
        data.update(overrides)
        defaults = dict(self.manifest.get("generation") or {})  # the model's defaults fill the rest
        if "max_length" in data:
            defaults.pop("max_new_tokens", None)
        fields = {
            **defaults,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            **data,
        }
        extra = undecodable_ids(self.tokenizer, self.vocab_size)
        if extra:  # ids the tokenizer could not decode
            fields["suppress_tokens"] = sorted({*(fields.get("suppress_tokens") or ()), *extra})
        generation = GenerationConfig.model_validate(fields)
        check_generation(generation)
        return generation

    def generate(
        self, pixel_values: np.ndarray, config: GenerationConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> OnnxGeneration:
        """Greedy captions for ``pixel_values`` (B, 3, H, W) float32 (see ``preprocess``); ``config`` and
        keyword ``overrides`` are ``GenerationConfig`` fields (unsupported ones raise ``ConfigError``)."""
        cfg = self._generation(config, overrides)
        rows = pixel_values.shape[0]
        max_len = max(1, min(cfg.total_length, self.max_seq_len))
        sequences = np.full((rows, max_len), cfg.pad_token_id, dtype=np.int64)
        sequences[:, 0] = cfg.bos_token_id
        token_scores = np.zeros((rows, max(max_len - 1, 0)), dtype=np.float32)
        suppressed = np.array([t for t in cfg.suppress_tokens or () if 0 <= t < self.vocab_size], dtype=np.int64)
        if max_len > 1 and rows:
            cross = self.cross_kv(self.encode(pixel_values))
            past = self.empty_cache(rows)
            active = np.arange(rows)
            tokens = sequences[:, :1]
            for t in range(1, max_len):
                logits, past = self.step(tokens, past, cross)
                logits = logits.astype(np.float32, copy=True)
                logits[:, suppressed] = -np.inf
                if t < cfg.min_length:
                    logits[:, cfg.eos_token_id] = -np.inf
                chosen = logits.argmax(axis=-1)
                sequences[active, t] = chosen
                token_scores[active, t - 1] = np.take_along_axis(_log_softmax(logits), chosen[:, None], 1)[:, 0]
                if t >= cfg.min_length:
                    done = chosen == cfg.eos_token_id
                    if done.any():  # finished rows leave the batch, as in the PyTorch greedy loop
                        keep = np.flatnonzero(~done)
                        if keep.size == 0:
                            break
                        past, cross = past[:, :, keep], cross[:, :, keep]
                        active, chosen = active[keep], chosen[keep]
                tokens = chosen[:, None]
        is_eos = sequences[:, 1:] == cfg.eos_token_id
        lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 2, max_len)
        longest = int(lengths.max()) if rows else 1
        sequences = np.where(np.arange(max_len)[None] >= lengths[:, None], cfg.pad_token_id, sequences)[:, :longest]
        sums = token_scores[:, : longest - 1].sum(axis=1)
        texts = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in sequences]
        return OnnxGeneration(sequences, sums, sums / np.maximum(lengths - 1, 1).astype(np.float32), texts)

    def caption_files(
        self,
        paths: Sequence[str | Path],
        config: GenerationConfig | Mapping[str, Any] | None = None,
        batch_size: int = 16,
        **overrides: Any,
    ) -> Iterator[CaptionResult]:
        """One ``CaptionResult`` per image, in order, as ``captioning.caption_images`` gives them (an
        unreadable image is a result with ``error``)."""
        cfg = self._generation(config, overrides)  # refuse unsupported options before reading any image
        paths = [Path(p) for p in paths]

        def load(path: Path) -> np.ndarray | str:
            try:
                return self.preprocess(load_image(str(path), self.max_image_pixels, draft_size=max(self.image_size)))
            except DataError as exc:
                return str(exc)

        batches = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
        for batch, loaded in read_ahead(batches, load, self.loader_threads):  # next batch read meanwhile
            results = [
                CaptionResult(str(path), None, error=item if isinstance(item, str) else None)
                for path, item in zip(batch, loaded)
            ]
            arrays = [item for item in loaded if not isinstance(item, str)]
            if arrays:
                out = self.generate(np.stack(arrays), cfg)
                ok = [i for i, item in enumerate(loaded) if not isinstance(item, str)]
                for slot, i in enumerate(ok):
                    results[i].caption = out.texts[slot]
                    results[i].score = float(out.sequence_scores[slot])
                    results[i].penalised_score = float(out.scores_penalised[slot])
            yield from results
