"""The prepared GPU check (benchmarks/gpu/run.py): its wheel list covers what the library imports beyond the GPU
image, the prepared folders fit the device tool's 64 MiB, the checkout is importable from a bare target folder with
its analyses registered, and a dry run of the whole flow on the CPU (install into a temporary target, the quick test
selection, every benchmark) writes what a GPU run would bring back. Nothing here needs the network: the download
(``--prepare``) is checked only when its folder exists."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "benchmarks" / "gpu"
BENCHES = ("capture_overhead", "batched_spectra", "erv_era", "weight_spectra")


def _load_run():
    spec = importlib.util.spec_from_file_location("gpu_check_run", GPU / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()


OPTIONAL = {"sniffio"}  # imported in try/except by httpcore and anyio (image packages) when it is installed


def _names(path: Path) -> set[str]:
    """Normalised distribution names of wheels.txt (``name==version``) or image.txt (names)."""
    words = " ".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines()).split()
    return {run.normalise(w.split("==")[0]) for w in words}


def test_wheel_list_is_pinned_once_each_and_agrees_with_pyproject():
    reqs = run.requirements()
    names = [run.normalise(r.split("==")[0]) for r in reqs]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9_.]*", r) for r in reqs), reqs
    assert len(names) == len(set(names)), "two versions of one package stop the install there"
    pins = {run.normalise(d.split("==")[0]): d.split("==")[1]
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if "==" in d}
    for req in reqs:
        name, version = req.split("==")
        if run.normalise(name) in pins:
            assert pins[run.normalise(name)] == version.split()[0], f"{req} differs from pyproject.toml's pin"
    assert not set(names) & _names(GPU / "image.txt") - {"transformers"}, "a carried package is in the image"


def _requirements_closure(dists: set[str]) -> set[str]:
    """``dists`` and everything they require as installed here, transitively (extras left out)."""
    seen, todo = set(), list(dists)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" not in req:
                todo.append(run.normalise(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def test_carried_wheels_cover_every_module_the_library_and_analyses_import():
    """Import every module of workbench and of the analyses in a fresh interpreter, map each top-level module it
    loaded to its distribution: each must be the standard library, this project, carried (wheels.txt), or in the
    image (image.txt) together with what those image packages require here (their own dependencies travel with them
    there). The dashboard (streamlit) and the optional sae-lens/gguf paths are imported lazily and left out."""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import workbench, workbench_analyses\n"
        "for pkg in (workbench, workbench_analyses):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'):  # that one runs the CLI\n"
        "            importlib.import_module(m.name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT, env=env,
                         timeout=600)
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    owners = md.packages_distributions()
    allowed = ({"spectral_workbench", "workbench"} | _names(GPU / "wheels.txt")
               | _requirements_closure(_names(GPU / "image.txt")))
    missing = {}
    for module in modules:
        if (module in sys.stdlib_module_names or module.startswith("_") or module in OPTIONAL
                or module in ("workbench", "workbench_analyses")):
            continue
        dists = {run.normalise(d) for d in owners.get(module, [])}
        if dists and not dists & allowed:
            missing[module] = sorted(dists)
    assert not missing, f"imported at run time but neither in the GPU image nor carried: {missing}"


def test_prepared_folders_fit_the_device_limit():
    wheels = sorted(run.WHEELS.glob("*.whl")) if run.WHEELS.is_dir() else []
    if not wheels:
        pytest.skip("no .whl/ here: `python benchmarks/gpu/run.py --prepare` downloads it (needs the network)")
    keys = [run.wheel_key(w) for w in wheels]
    assert len({k[0] for k in keys}) == len(keys), "one version of each package"
    assert {f"{n}=={v}" for n, v in keys} == {f"{run.normalise(r.split('==')[0])}=={r.split('==')[1]}"
                                            for r in run.requirements()}
    for w in wheels:  # pure Python, or built for CPython 3.12 on manylinux x86_64
        tags = w.stem.split("-")[-3:]
        assert tags[2] == "any" or ("x86_64" in tags[2] and tags[0] in ("cp312", "py3", "py312")), w.name
    total = sum(w.stat().st_size for w in wheels) + run.folder_bytes(run.MODEL_DIR) + run.tree_bytes()
    assert total < run.LIMIT_BYTES, f"{total / 2**20:.1f} MiB would travel"
    assert run.check_size() == 0


def test_checkout_linked_into_a_bare_site_registers_the_builtin_analyses(tmp_path):
    """What run.py does there instead of installing the project: workbench_analyses/workbench_app links and a
    ``.dist-info`` with pyproject.toml's entry points, found by importlib.metadata from a plain folder."""
    run.link_checkout(tmp_path)
    run.link_checkout(tmp_path)  # idempotent: a second run over the same folder
    assert (tmp_path / "workbench_analyses" / "weight_spectra" / "__init__.py").is_file()
    dists = list(md.distributions(path=[str(tmp_path)]))
    assert [d.metadata["Name"] for d in dists] == ["spectral-workbench"]
    eps = {ep.name: ep.value for ep in dists[0].entry_points if ep.group == "workbench.analyses"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["workbench.analyses"]
    analyses = {p.stem for p in (ROOT / "analyses").glob("[!_]*.py")} | {
        p.name for p in (ROOT / "analyses").iterdir() if (p / "__init__.py").is_file()}
    assert eps == declared and set(eps) == analyses  # every analysis in analyses/, none forgotten


def test_pytest_command_ignores_modules_of_absent_packages(tmp_path):
    cmd = run.pytest_command(["streamlit", "sae_lens"], workers=8, quick=False)
    assert "--ignore=tests/app" in cmd and cmd[-1] == "tests" and cmd[cmd.index("-n") + 1] == "8"
    assert "not slow" in cmd and "pytest_absent" in cmd
    quick = run.pytest_command([], workers=1, quick=True)
    assert "-n" not in quick and not any(c.startswith("--ignore") for c in quick)
    assert all((ROOT / t).is_file() for t in run.QUICK_TESTS)


def _tiny_model_dir(folder: Path) -> Path:
    """A small Llama config and the character tokenizer: the benchmarks build their random-weight model from it."""
    from transformers import LlamaConfig

    from tests.helpers import char_tokenizer

    folder.mkdir()
    LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                eos_token_id=2).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_dry_run_on_cpu_writes_every_result(tmp_path):
    """``run.py --device cpu --quick`` end to end: wheels installed into a temporary target (when --prepare has
    run here; else the venv's packages), the quick test selection, all four benchmarks; at most 8 files come back."""
    out, site = tmp_path / "out", tmp_path / "site"
    have_wheels = run.WHEELS.is_dir() and any(run.WHEELS.glob("*.whl"))
    cmd = [sys.executable, str(GPU / "run.py"), "--device", "cpu", "--quick", "--out", str(out), "--site", str(site),
           "--model-dir", str(_tiny_model_dir(tmp_path / "model")), "--budget", "600"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORKBENCH_TEST_DEVICE")}
    proc = subprocess.run(cmd + ([] if have_wheels else ["--no-install"]), capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["summary.md", "env.json", "tests.log", "bench.log", *[f"bench_{b}.json" for b in BENCHES]])
    assert len(files) <= 8
    env_info = json.loads((out / "env.json").read_text())
    assert env_info["device"] == "cpu" and env_info["torch"] and env_info["device_name"]
    for name in BENCHES:
        data = json.loads((out / f"bench_{name}.json").read_text())
        assert data["rows"], (name, data["lines"])
        assert data["env"] == env_info
    assert re.search(r"\d+ passed", (out / "tests.log").read_text())
    summary = (out / "summary.md").read_text()
    assert "tests (1 workers" in summary and "benchmarks: exit code 0" in summary
    if have_wheels:
        assert (site / "transformer_lens").is_dir() and (site / "workbench_analyses").is_symlink()
        assert "installed 7 wheels" in summary or "installed 8 wheels" in summary
