"""Component resolution: configs are plain data, components are resolved against a given registry (the
host a call runs on), the registry's defaults are what a config without names gets, decoding strategies
get their own options, the core has no import cycle, and a checkpoint's model is built once."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import make_plugin_dist

from geometry_os.cli import cli
from geometry_os.errors import CheckpointError, ComponentError, ConfigError
from geometry_os.host import Host, default_registry_path, get_host, set_host
from geometry_os.systems.pixel_llm.config import preset_config
from geometry_os.systems.pixel_llm.generation_config import GenerationConfig
from geometry_os.systems.pixel_llm.inference import generate_caption
from geometry_os.systems.pixel_llm.modeling import PixelLLM, load_pretrained
from geometry_os.systems.pixel_llm.resolution import get_component, resolve_model, resolve_strategy
from geometry_os.systems.pixel_llm.vocabulary import tokenizer_misfit, undecodable_ids

ROOT = Path(__file__).resolve().parents[1]

STRATEGY_PLUGIN = '''
from pydantic import BaseModel, ConfigDict, Field
from geometry_os.systems.pixel_llm.hookspecs import hookimpl


class RepeatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: int = Field(5, ge=0)
    length: int = Field(2, ge=1)


class RepeatDecoding:
    """Writes ``length`` copies of ``token`` after <bos>, whatever the image."""

    def __init__(self, options):
        self.options = options

    def decode(self, model, features, config, generator=None):
        import torch
        from geometry_os.systems.pixel_llm.inference import GenerationOutput

        rows = features.shape[0]
        seq = torch.full((rows, 1 + self.options.length), self.options.token, dtype=torch.long)
        seq[:, 0] = config.bos_token_id
        zeros = torch.zeros(rows, device=features.device)
        return GenerationOutput(sequences=seq.to(features.device), sequence_scores=zeros, scores_penalised=zeros)


class QuickGreedy:
    """A second greedy strategy (the built-in one's loop): serves the greedy mode."""

    def __init__(self, options=None):
        from geometry_os.plugins.decoding.greedy import GreedyDecoding

        self.inner = GreedyDecoding(options)

    def decode(self, model, features, config, generator=None):
        return self.inner.decode(model, features, config, generator=generator)


@hookimpl
def register_decoding_strategies(register):
    register("repeat", RepeatDecoding, RepeatOptions)
    register("quick", QuickGreedy, serves=["greedy"])
'''


@pytest.fixture
def strategy_plugin(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path / "site", "geo-repeat", "0.1", "geo_repeat_strategy", STRATEGY_PLUGIN, "repeat")
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("geo_repeat_strategy", None)


def registry_with(tmp_path: Path, **defaults: str) -> Path:
    """The shipped registry with some ``[systems.pixel_llm.defaults]`` replaced."""
    text = default_registry_path().read_text(encoding="utf-8")
    for kind, name in defaults.items():
        start = text.index(f"\n{kind} = ")
        end = text.index("\n", start + 1)
        text = text[:start] + f'\n{kind} = "{name}"' + text[end:]
    path = tmp_path / "registry.toml"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_model(seed: int = 0, **fields) -> PixelLLM:
    torch.manual_seed(seed)
    return PixelLLM(preset_config("tiny", **fields)).eval()


# ---- 1. configs are plain data ------------------------------------------------------------------------


def test_building_configs_creates_no_host_and_imports_no_plugin():
    code = (
        "import sys\n"
        "import geometry_os.host as host\n"
        "from geometry_os.systems.pixel_llm.config import PixelLLMConfig, load_config, preset_config\n"
        "from geometry_os.systems.pixel_llm.generation_config import GenerationConfig\n"
        "PixelLLMConfig(); preset_config('tiny'); load_config(None, ['encoder=anything'], preset='small')\n"
        "GenerationConfig(num_beams=3); GenerationConfig(strategy='nucleus', strategy_options={'p': 1})\n"
        "plugins = sorted(m for m in sys.modules if m.startswith('geometry_os.plugins'))\n"
        "print(host._HOST is None, host._ACTIVE.get() is None, plugins)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True", "[]"], out.stdout + out.stderr


def test_resolving_fills_in_the_default_names_and_keeps_given_ones():
    config = preset_config("tiny")
    assert config.encoder is None and config.decoder is None  # plain data: nothing looked up
    resolved = resolve_model(config)
    defaults = get_host().system("pixel_llm").components.defaults
    assert (resolved.config.encoder, resolved.config.decoder) == (defaults["encoder"], defaults["decoder"])
    assert resolved.encoder_options.embed_dim == 32 and resolved.decoder_options.vocab_size == 64
    assert resolve_model(preset_config("tiny", encoder=defaults["encoder"])).config == resolved.config
    with pytest.raises(ConfigError, match="^x.toml: unknown decoder 'nope'; registered decoders: xattn$"):
        resolve_model(preset_config("tiny", decoder="nope"), source="x.toml")


# ---- 2. Host.call runs with its own host --------------------------------------------------------------


def test_a_system_call_resolves_against_the_host_it_is_called_on():
    process_host = Host(entry_points=False)
    set_host(process_host)
    without_vit = Host(disabled=["vit"], entry_points=False)
    with pytest.raises(ConfigError, match="unknown encoder 'vit'; registered encoders: \\(none\\)"):
        without_vit.call("pixel_llm.info", preset="tiny")
    assert get_host() is process_host  # the call's host is only active during the call
    assert process_host.call("pixel_llm.info", preset="tiny")["config"]["encoder"] == "vit"
    with without_vit.active():
        assert get_host() is without_vit
        with pytest.raises(ConfigError, match="unknown encoder 'vit'"):
            PixelLLM(preset_config("tiny"))
    assert get_host() is process_host


def test_an_explicit_registry_wins_over_the_host_in_use(toy_plugin, tmp_path):
    host = Host(registry_with(tmp_path, encoder="toy"))
    model = PixelLLM(preset_config("tiny"), components=host.system("pixel_llm").components)
    assert model.config.encoder == "toy" and type(model.encoder).__name__ == "ToyEncoder"
    folder = model.save_pretrained(tmp_path / "ck")
    assert json.loads((folder / "config.json").read_text())["model"]["encoder"] == "toy"  # the name, on disk
    loaded, _ = load_pretrained(folder, components=host.system("pixel_llm").components)
    assert loaded.config.encoder == "toy"


# ---- 3. the registry's defaults are honoured, and "(default)" is truthful -----------------------------------


def test_every_marked_default_is_what_a_config_without_a_name_gets():
    from geometry_os.systems.pixel_llm.data import resolve_tokenizer

    registry = get_host().system("pixel_llm").components
    assert set(registry.defaults) == {"encoder", "decoder", "tokenizer", "decoding_strategy", "trainer"}
    resolved = resolve_model(preset_config("tiny"))
    assert resolved.encoder.name == registry.defaults["encoder"]
    assert resolved.decoder.name == registry.defaults["decoder"]
    tokenizer, _ = resolve_tokenizer(None, ["a red square"])
    assert type(tokenizer) is get_component("tokenizer", registry.defaults["tokenizer"]).load()
    assert resolve_strategy(GenerationConfig()).component.name == registry.defaults["decoding_strategy"]
    assert get_component("trainer").name == registry.defaults["trainer"]
    result = CliRunner().invoke(cli, ["pixel-llm", "components", "--json"])
    marked = {(row["kind"], row["name"]) for row in json.loads(result.output) if row["default"]}
    assert marked == set(registry.defaults.items())


def test_the_registry_default_strategy_serves_its_mode_and_the_others_go_elsewhere(strategy_plugin, tmp_path):
    host = Host(registry_with(tmp_path, decoding_strategy="quick"))
    registry = host.system("pixel_llm").components
    assert resolve_strategy(GenerationConfig(), registry).component.name == "quick"
    assert resolve_strategy(GenerationConfig(num_beams=3), registry).component.name == "beam"
    assert resolve_strategy(GenerationConfig(do_sample=True), registry).component.name == "sample"
    assert resolve_strategy(GenerationConfig(strategy="greedy"), registry).component.name == "greedy"
    assert resolve_strategy(GenerationConfig(strategy="repeat"), registry).component.name == "repeat"
    with pytest.raises(ComponentError, match="unknown decoding_strategy 'nucleus'; registered decoding_strategies"):
        resolve_strategy(GenerationConfig(strategy="nucleus"), registry)
    model, images = tiny_model(), torch.rand(2, 3, 32, 32)
    with host.active():
        assert torch.equal(
            generate_caption(model, images, max_length=6),
            generate_caption(model, images, max_length=6, strategy="greedy"),
        )


def test_a_mode_no_registered_strategy_serves_is_named(tmp_path):
    host = Host(registry_with(tmp_path), disabled=["decoding"], entry_points=False)
    with pytest.raises(ComponentError, match="no registered decoding_strategy serves 'beam'"):
        resolve_strategy(GenerationConfig(num_beams=2), host.system("pixel_llm").components)


def test_serves_must_be_a_list_of_names(tmp_path, monkeypatch):
    source = (
        "from geometry_os.systems.pixel_llm.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def register_decoding_strategies(register):\n"
        "    register('odd', 'x:y', serves='greedy')\n"
    )
    root = make_plugin_dist(tmp_path / "site", "geo-odd", "0.1", "geo_odd_serves", source, "odd")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(UserWarning, match="decoding_strategy 'odd' serves must be a list of names, got 'greedy'"):
        host = Host()
    assert "odd" not in host.system("pixel_llm").components.names("decoding_strategy")


# ---- 4. decoding-strategy options reach the strategy -------------------------------------------------------


def test_strategy_options_reach_a_third_party_strategy(strategy_plugin):
    model, images = tiny_model(), torch.rand(3, 3, 32, 32)
    ids = generate_caption(model, images, strategy="repeat", strategy_options={"token": 7, "length": 3})
    assert ids.tolist() == [[1, 7, 7, 7]] * 3
    assert generate_caption(model, images, strategy="repeat").tolist() == [[1, 5, 5]] * 3  # its defaults
    with pytest.raises(ConfigError, match="^decoding_strategy 'repeat': length: Input should be greater than"):
        generate_caption(model, images, strategy="repeat", strategy_options={"length": 0})
    with pytest.raises(ConfigError, match="decoding_strategy 'greedy': colour: Extra inputs are not permitted"):
        generate_caption(model, images, strategy_options={"colour": 1})  # the built-ins take none


def test_strategy_options_from_the_command_line(strategy_plugin, tmp_path):
    from PIL import Image

    vocab = get_component("tokenizer").load().train(["a red square", "a blue circle"])
    model = tiny_model(vocab_size=len(vocab))
    model.save_pretrained(tmp_path / "ck", tokenizer=vocab)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), "red").save(image)
    red = vocab.encode("red", add_special_tokens=False)[0]
    args = ["pixel-llm", "caption", str(image), "--checkpoint", str(tmp_path / "ck"), "--json", "--strategy", "repeat"]
    result = CliRunner().invoke(cli, [*args, "--strategy-option", f"token={red}", "--strategy-option", "length=2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["caption"] == "red red"
    result = CliRunner().invoke(cli, [*args, "--strategy-option", "speed=3"])
    assert (
        result.exit_code != 0 and "decoding_strategy 'repeat': speed: Extra inputs are not permitted" in result.output
    )
    result = CliRunner().invoke(cli, [*args, "--strategy-option", "token"])
    assert result.exit_code != 0 and "--strategy-option 'token': expected key=value" in result.output


# ---- 5. no import cycle in the core -------------------------------------------------------------------------


def core_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every module under geometry_os/."""
    found = {}
    for path in (ROOT / "geometry_os").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def imported_modules(name: str, modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """Core modules that module ``name`` imports anywhere in its file (function-local imports included;
    ``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    path, package = modules[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    here = name if package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    out.add(f"{target}.{alias.name}")
                elif target in modules:
                    out.add(target)
    out.discard(name)
    return out


def test_core_modules_import_without_cycles():
    import importlib

    modules = core_modules()
    graph = {name: imported_modules(name, modules) for name in modules}
    assert graph["geometry_os.systems.pixel_llm.config"] >= {"geometry_os.systems.pixel_llm.generation_config"}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles among geometry_os modules: " + "; ".join(cycles)
    for name in sorted(modules):  # and each one imports on its own
        importlib.import_module(name)


# ---- 6. a checkpoint's model is built once: meta device, then the saved tensors assigned -----------------------


def test_loading_assigns_the_saved_tensors_and_keeps_ties_and_computed_buffers(tmp_path, monkeypatch):
    model = tiny_model(3, vision_pos_embed="sincos", tie_word_embeddings=True)
    images, ids = torch.rand(2, 3, 32, 32), torch.randint(4, 64, (2, 7))
    with torch.no_grad():
        before = model(images, ids).logits
    model.save_pretrained(tmp_path / "ck")

    builds = []
    original = PixelLLM.__init__

    def counting(self, *args, **kwargs):
        builds.append(torch.get_default_device().type)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PixelLLM, "__init__", counting)
    loaded, _ = load_pretrained(tmp_path / "ck")
    assert builds == ["meta"]  # one model, on the meta device: no random init of real memory
    with torch.no_grad():
        assert torch.equal(loaded(images, ids).logits, before)
    tensors = dict(loaded.state_dict(keep_vars=True))
    assert not any(t.is_meta for t in tensors.values())
    buffers = dict(model.named_buffers())  # the sin-cos positions: computed, not saved (persistent=False)
    assert not any(b.is_meta for b in loaded.buffers())
    assert buffers and all(torch.equal(b, buffers[n]) for n, b in loaded.named_buffers())
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())


def test_the_caption_command_reads_the_registry_once_and_builds_one_model(tmp_path, monkeypatch):
    from PIL import Image

    import geometry_os.host as host_module
    from geometry_os.components import Component

    vocab = get_component("tokenizer").load().train(["a red square"])
    tiny_model(vocab_size=len(vocab)).save_pretrained(tmp_path / "ck", tokenizer=vocab)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    set_host(None)
    calls = {"read_registry": 0, "PixelLLM": 0, "validated": 0}
    read, init, options = host_module.read_registry, PixelLLM.__init__, Component.options

    def counting_read(*args, **kwargs):
        calls["read_registry"] += 1
        return read(*args, **kwargs)

    def counting_init(self, *args, **kwargs):
        calls["PixelLLM"] += 1
        init(self, *args, **kwargs)

    def counting_options(self, values=None):
        calls["validated"] += self.config_model is not None and not isinstance(values, self.config_model)
        return options(self, values)

    monkeypatch.setattr(host_module, "read_registry", counting_read)
    monkeypatch.setattr(PixelLLM, "__init__", counting_init)
    monkeypatch.setattr(Component, "options", counting_options)
    result = CliRunner().invoke(
        cli, ["pixel-llm", "caption", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "ck")]
    )
    assert result.exit_code == 0, result.output
    assert calls == {"read_registry": 1, "PixelLLM": 1, "validated": 3}  # encoder, decoder, strategy options: once each


class Tied(torch.nn.Module):
    """Two linear layers sharing one weight, as a decoder with a tied LM head (``tie_word_embeddings``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 4, bias=False)
        self.head = torch.nn.Linear(4, 4, bias=False)
        self.head.weight = self.embed.weight


def test_assigned_weights_are_tied_again(tmp_path):
    from safetensors.torch import save_model

    from geometry_os.systems.pixel_llm.checkpoint import alias_groups
    from geometry_os.systems.pixel_llm.modeling import _assign_weights

    torch.manual_seed(0)
    saved = Tied()
    save_model(saved, str(tmp_path / "w.safetensors"))  # one copy of the shared weight
    with torch.device("meta"):
        skeleton = Tied()
    aliases = alias_groups(skeleton)
    assert sorted(map(sorted, aliases)) == [["embed.weight", "head.weight"]]
    _assign_weights(skeleton, tmp_path / "w.safetensors", aliases, resolved=None)
    assert skeleton.head.weight is skeleton.embed.weight and len(list(skeleton.parameters())) == 1
    assert torch.equal(skeleton.head.weight, saved.embed.weight) and not skeleton.head.weight.is_meta


def test_overlapping_meta_blocks_in_two_threads_neither_unpatch_each_other_nor_leave_the_patch():
    import threading

    from geometry_os.systems.pixel_llm.modeling import _parameters_on_meta

    original = torch.nn.Module.register_parameter
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with _parameters_on_meta():
            a_in.set()
            b_in.wait(10)
        a_out.set()  # left its block while the other thread is still in its own

    def second():
        a_in.wait(10)
        with _parameters_on_meta():
            b_in.set()
            a_out.wait(10)
            seen.append(torch.nn.Linear(2, 2).weight.is_meta)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [True]
    assert torch.nn.Module.register_parameter is original
    assert not torch.nn.Linear(2, 2).weight.is_meta


# ---- 7. one place says whether a tokenizer fits a model -----------------------------------------------------------


def test_one_function_says_whether_a_tokenizer_fits():
    vocab = get_component("tokenizer").load().train(["a red square"])
    size = len(vocab)
    assert tokenizer_misfit(vocab, size) is None and tokenizer_misfit(None, 1) is None
    assert tokenizer_misfit(vocab, size - 1) == f"tokenizer has {size} tokens but the model's vocab_size is {size - 1}"
    assert list(undecodable_ids(vocab, size + 2)) == [size, size + 1] and not undecodable_ids(vocab, size)
    assert not undecodable_ids(object(), 99)  # a tokenizer without a length: unknown, nothing suppressed
    sources = [*(ROOT / "geometry_os").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    copies = [p.name for p in sources if "len(tokenizer) >" in p.read_text() or "known < " in p.read_text()]
    assert not copies, f"tokenizer-fit comparisons outside vocabulary.py: {copies}"


def test_a_checkpoint_whose_tokenizer_outgrows_the_model_is_refused(tmp_path):
    vocab = get_component("tokenizer").load().train(["a red square", "a blue circle"])
    model = tiny_model(vocab_size=len(vocab))
    folder = model.save_pretrained(tmp_path / "ck", tokenizer=vocab)
    data = json.loads((folder / "config.json").read_text())
    data["model"]["vocab_size"] = len(vocab) - 1
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="tokens but the model's vocab_size is|tensor shapes do not match"):
        load_pretrained(folder)
