"""Hostile model folders and devices that are not there: a config without weights, a garbage config.json, pickle-only
``.bin`` weights (refused unless ``allow_pickle=True``; a payload never runs), and ``device=`` values this machine does
not have — each a named WorkbenchError (exit 2 with one ``error:`` line from the CLI), never a raw torch
AssertionError."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import char_tokenizer
from tests.hostile.strategies import Payload, json_text, json_values
from workbench import capture, load_model
from workbench.devices import check_device
from workbench.errors import ConfigError, ModelLoadError, WorkbenchError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny random Llama saved as config.json + model.safetensors + tokenizer files (not loaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hostile-llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2)).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def _copy(saved: Path, dest: Path, *, weights: bool = True) -> Path:
    shutil.copytree(saved, dest, ignore=None if weights else shutil.ignore_patterns("*.safetensors"))
    return dest


def _bin_only(saved: Path, dest: Path) -> Path:
    from safetensors.torch import load_file

    folder = _copy(saved, dest, weights=False)
    torch.save(load_file(saved / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_config_without_weights(saved, tmp_path):
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(_copy(saved, tmp_path / "m", weights=False))


@pytest.mark.timeout(300)
@settings(max_examples=max(15, settings().max_examples // 10))  # each case loads a folder: 15 in ci, 100 long
@given(config=st.one_of(st.binary(max_size=40), json_values.map(lambda v: json_text(v).encode()),
                        st.fixed_dictionaries({"model_type": st.sampled_from(["llama", "gpt2", "nope", ""])},
                                              optional={"hidden_size": json_values, "num_hidden_layers": json_values,
                                                        "vocab_size": json_values, "architectures": json_values})
                        .map(lambda v: json_text(v).encode())))
def test_garbage_config_json(saved, config):
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-config-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    _copy(saved, folder)
    (folder / "config.json").write_bytes(config)
    try:
        load_model(folder)
    except (ModelLoadError, ConfigError):
        pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_pickle_only_weights_are_refused_unless_allowed(saved, tmp_path):
    folder = _bin_only(saved, tmp_path / "bin")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        load_model(folder)
    lm = load_model(folder, allow_pickle=True)  # the explicit opt-in loads the same weights
    reference = load_model(saved)
    names = [n for n, _ in reference.model.named_parameters()]
    assert names and all(torch.equal(a, b) for a, b in zip(reference.model.parameters(), lm.model.parameters()))
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_model(folder, allow_pickle="yes")


@pytest.mark.parametrize("form", ["legacy pickle", "torch.save zip"])
def test_a_pickle_payload_in_bin_weights_never_runs(saved, tmp_path, form):
    marker = tmp_path / "ran"
    folder = _copy(saved, tmp_path / "evil", weights=False)
    if form == "legacy pickle":
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload(str(marker))}))
    else:
        torch.save({"model.embed_tokens.weight": Payload(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_model(folder)
    assert not marker.exists()
    with pytest.raises(ModelLoadError):  # opted in: transformers still unpickles with weights_only=True
        load_model(folder, allow_pickle=True)
    assert not marker.exists()
    both = _copy(saved, tmp_path / "both")  # safetensors beside an evil .bin: the .bin is never read
    shutil.copy(folder / "pytorch_model.bin", both / "pytorch_model.bin")
    load_model(both)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------------
# devices that are not there


def _absent_devices() -> list[str]:
    out = ["cuda:-1", "gpu", "cuda:x", "", " cpu", "cpu:0:1", "\x00"]
    if not torch.cuda.is_available():
        out += ["cuda", "cuda:0", "cuda:7"]
    else:
        out += [f"cuda:{torch.cuda.device_count()}"]
    if not torch.backends.mps.is_available():
        out += ["mps"]
    return out


@pytest.mark.parametrize("device", _absent_devices())
def test_absent_devices_are_named(device, tiny_model):
    with pytest.raises(ConfigError, match="parameter 'device'"):
        check_device("capture", "device", device)
    with pytest.raises(ModelLoadError, match="parameter 'device'"):
        load_model("no-such-folder", device=device)
    with pytest.raises(ModelLoadError, match="parameter 'device'"):
        load_model(tiny_model.model, device=device)
    with pytest.raises(ConfigError, match="parameter 'device'"):
        capture(tiny_model, "Hello", sites="blocks.0.hook_resid_post", device=device)


@pytest.mark.timeout(120)
@given(device=st.one_of(st.text(max_size=12), st.sampled_from(["cuda", "cuda:7", "mps", "xpu", "meta", "cpu"]),
                        st.integers(-3, 9), st.none(), st.floats()))
def test_any_device_value_is_named_or_present(device):
    try:
        parsed = check_device("capture", "device", device)
    except ConfigError:
        return
    torch.empty(1, device=parsed)  # accepted: the device exists


@pytest.mark.timeout(120)
def test_cli_absent_device_is_one_named_line(tmp_path):
    device = "cuda:7" if not torch.cuda.is_available() or torch.cuda.device_count() < 8 else "mps"
    done = subprocess.run([sys.executable, "-m", "workbench", "report", "--device", device, "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=100, cwd=ROOT,
                          env=os.environ | {"WORKBENCH_DEBUG": ""})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: report(): parameter '--device'"), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_cli_pickle_only_model_needs_allow_pickle(saved, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    folder = _bin_only(saved, tmp_path / "bin")
    result = CliRunner().invoke(app, ["report", "--model", str(folder), "--analyses", "weight_spectra", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2 and "--allow-pickle" in result.output, result.output
    assert isinstance(result.exception, SystemExit)
    result = CliRunner().invoke(app, ["report", "--model", str(folder), "--analyses", "weight_spectra", "--out",
                                      str(tmp_path / "out"), "--allow-pickle"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.json").is_file()


def test_named_errors_are_workbench_errors():
    assert issubclass(ModelLoadError, WorkbenchError) and issubclass(ConfigError, WorkbenchError)
