"""Tests of load_model (workbench.models.load, .loaded, .adapters): the tiny random Llama through the local-folder
path, models passed in, and ModelLoadError messages. The bundled-model registry and the converted-model cache have
their own files (test_bundled.py, test_cache.py)."""

import shutil

import pytest
import torch

import workbench
from workbench.errors import ModelLoadError

# --------------------------------------------------------------------------------------------------------------------
# the tiny model through the local-folder path


def test_tiny_model_facts(tiny_model):
    facts = tiny_model.facts
    assert (facts.n_layers, facts.d_model, facts.n_heads, facts.n_kv_heads) == (2, 32, 4, 2)
    assert (facts.d_head, facts.d_mlp, facts.d_vocab, facts.gated_mlp) == (8, 64, 300, True)
    assert (tiny_model.n_layers, tiny_model.d_model, tiny_model.n_heads) == (2, 32, 4)
    assert tiny_model.folder is not None and tiny_model.adapter.name == "transformer-bridge"
    assert "n_layers=2" in repr(tiny_model)


def test_weights_yields_every_kind_in_transformer_lens_shapes(tiny_model):
    f = tiny_model.facts
    shapes = {"W_Q": (f.n_heads, f.d_model, f.d_head), "W_K": (f.n_kv_heads, f.d_model, f.d_head),
              "W_V": (f.n_kv_heads, f.d_model, f.d_head), "W_O": (f.n_heads, f.d_head, f.d_model),
              "W_in": (f.d_model, f.d_mlp), "W_gate": (f.d_model, f.d_mlp), "W_out": (f.d_mlp, f.d_model),
              "W_E": (f.d_vocab, f.d_model), "W_U": (f.d_model, f.d_vocab)}
    got = list(tiny_model.weights())
    layer_kinds = ["W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out"]
    expected_order = [(k, layer) for layer in range(2) for k in layer_kinds] + [("W_E", None), ("W_U", None)]
    assert [(kind, layer) for kind, layer, _ in got] == expected_order
    for kind, layer, w in got:
        assert tuple(w.shape) == shapes[kind], (kind, layer)
    # W_E is the embedding table the model really uses
    torch.testing.assert_close(tiny_model.weight("W_E"), tiny_model.model.embed.weight)


def test_loaded_model_passed_back_returns_itself(tiny_model):
    assert workbench.load_model(tiny_model) is tiny_model


def test_raw_bridge_is_wrapped_by_type(tiny_model):
    lm = workbench.load_model(tiny_model.model)
    assert isinstance(lm, workbench.LoadedModel)
    assert lm.model is tiny_model.model and lm.adapter.name == "transformer-bridge"
    assert lm.facts == tiny_model.facts and lm.name == "TransformerBridge"


def test_model_passed_in_records_the_device_it_lives_on(tiny_model):
    bridge = workbench.load_model(tiny_model.folder).model  # a separate copy: a fix may move it
    try:
        lm = workbench.load_model(bridge, device="meta")
    except ModelLoadError:
        return  # refusing the mismatch would be a fix too
    assert lm.device == next(lm.model.parameters()).device


def test_module_without_adapter_is_refused():
    with pytest.raises(ModelLoadError, match="Linear"):
        workbench.load_model(torch.nn.Linear(2, 2))


def test_source_of_wrong_type_is_refused():
    with pytest.raises(ModelLoadError, match="'source'"):
        workbench.load_model(42)


# --------------------------------------------------------------------------------------------------------------------
# ModelLoadError messages


def test_unknown_name_lists_bundled_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so the name cannot be an existing folder
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'") as info:
        workbench.load_model("no-such-model")
    assert "smollm2-135m" in str(info.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        workbench.load_model(tmp_path)


def test_folder_with_config_but_no_weights(tmp_path, tiny_model):
    shutil.copy(tiny_model.folder / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match=r"no weights \(\*.safetensors or \*.bin\)"):
        workbench.load_model(tmp_path)


def test_bad_device_string(tiny_model):
    with pytest.raises(ModelLoadError, match="'device'.*'not-a-device'"):
        workbench.load_model(tiny_model.folder, device="not-a-device")
