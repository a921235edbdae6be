"""Features: an SAE feature browser. Train a sparse autoencoder at a site of the loaded model (cached on disk, so the
same prompts and settings train once) or load one saved by sae-lens; stream a prompt set through the model to that
site; then browse every feature — density, activation histogram, the tokens it promotes and suppresses, and the
contexts where it fired most — without recomputing (the result stays in the session)."""

from pathlib import Path

import streamlit as st

from workbench.capture.hooks import REPRESENTATION_KINDS, site
from workbench.sae import feature_stats, load_sae, sae_hook_name, train_site_sae
from workbench_app.common import guard, local_path, model, prompts_input, run

TRAIN, LOAD = "Train on this model", "Load a sae-lens folder"


@st.cache_resource(show_spinner=False, max_entries=2)
def loaded_sae(path: str, device: str, stamp: int):
    """The SAE in ``path``, loaded again only when its weights file changes (``stamp``: its modification time)."""
    return load_sae(path, device=device)


def weights_stamp(path: str) -> int:
    weights = Path(path).expanduser() / "sae_weights.safetensors"
    return weights.stat().st_mtime_ns if weights.is_file() else 0


st.set_page_config(page_title="Features · workbench", layout="wide")
st.title("Features")
lm = model()
n_layers, d_model = lm.facts.n_layers, lm.facts.d_model

source = st.radio("SAE", [TRAIN, LOAD], horizontal=True, key="sae_source",
                  help="Train one here (sae-lens, on the prompts below; cached, so a second run loads it) or open a "
                       "folder saved by sae-lens (cfg.json + sae_weights.safetensors)")
sae = None
if source == LOAD:
    path = st.text_input("SAE folder", key="sae_path", placeholder="runs/blocks.15.hook_resid_post",
                         help="A folder written by sae-lens's SAE.save_model (or its training runner)").strip()
    if path:
        local_path("SAE folder", path)  # only inside the allowed roots
        with guard("Could not load the SAE"), st.spinner("Loading the SAE…"):
            sae = loaded_sae(path, str(lm.device), weights_stamp(path))
        hook = sae_hook_name(sae)
        if hook and st.session_state.get("site_from") != path:  # a newly loaded SAE: its recorded hook is the site
            st.session_state["site_text"], st.session_state["site_from"] = hook, path
        st.caption(f"{sae.cfg.architecture()} SAE, d_in {sae.cfg.d_in} → d_sae {sae.cfg.d_sae}"
                   f"{f', trained on {hook}' if hook else ', no hook recorded'}")
    else:
        st.info("Type the folder of an SAE saved by sae-lens.")

left, mid, right = st.columns(3)
named = bool(st.session_state.get("site_text", "").strip())  # a typed hook name replaces the layer and site
layer = left.selectbox("Layer", list(range(n_layers)), index=n_layers // 2, key="layer", disabled=named)
kind = mid.selectbox("Site", list(REPRESENTATION_KINDS), index=REPRESENTATION_KINDS.index("resid_post"), key="kind",
                     disabled=named)
typed = right.text_input("Or any hook name", key="site_text", placeholder="blocks.0.mlp.hook_post",
                         help="A TransformerLens hook name; it replaces the layer and site when filled in").strip()
hook_name = typed or site(kind, layer)
st.caption(f"Site: `{hook_name}`")

if source == TRAIN:
    c1, c2, c3 = st.columns(3)
    d_sae = c1.number_input("Features (d_sae)", min_value=1, value=4 * d_model, step=d_model, key="d_sae")
    sae_k = c2.number_input("Active features per token (top-k)", min_value=1, value=32, key="sae_k")
    epochs = c3.number_input("Epochs", min_value=1, value=20, key="epochs")

texts = prompts_input("feat")
c1, c2 = st.columns(2)
k = c1.number_input("Contexts per feature", min_value=1, max_value=1000, value=20, key="k")
window = c2.number_input("Tokens either side of a context", min_value=0, max_value=64, value=8, key="window")
ready = bool(texts) and (source == TRAIN or sae is not None)
if st.button("Train the SAE and browse its features" if source == TRAIN else "Browse its features", key="go",
             type="primary", disabled=not ready):
    st.session_state.pop("feature", None)  # the new result starts at its densest feature
    if source == TRAIN:
        sae = run("Training the SAE", train_site_sae, lm, texts, site=hook_name, d_sae=int(d_sae), k=int(sae_k),
                  epochs=int(epochs), progress=True)
    st.session_state["feat_stats"] = run("Feature statistics", feature_stats, lm, sae, texts, site=hook_name,
                                         k=int(k), window=int(window), progress=True)

stats = st.session_state.get("feat_stats")
if stats is None:
    st.stop()
st.info(stats.summary())
cols = st.columns(4)
cols[0].metric("Features", stats.n_features)
cols[1].metric("Tokens", stats.n_tokens)
if stats.sae.get("fvu") is not None:
    cols[2].metric("FVU (training data)", f"{stats.sae['fvu']:.4g}")
    cols[3].metric("L0 (training data)", f"{stats.sae['l0']:.4g}")
if stats.sae.get("path"):
    st.caption(f"SAE: {stats.sae['path']}")
st.download_button("Download JSON", stats.to_json(), file_name="feature_stats.json", mime="application/json",
                   key="feat-json")
st.plotly_chart(stats.plot(), key="density")
table = stats.to_pandas()
st.dataframe(table, hide_index=True, key="features")

query = st.text_input("Find features by token", key="search", placeholder="Paris",
                      help="Features whose top contexts fire on that token, then those that promote it most")
if query.strip():
    with guard("Search"):
        found = stats.search(query)
    if found:
        st.dataframe(table.iloc[found], hide_index=True, key="found")
    else:
        st.info(f"{query.strip()!r}: no feature fires on or promotes that token.")

f = int(st.number_input("Feature", min_value=0, max_value=stats.n_features - 1, value=stats.densest(1)[0],
                        key="feature", help="Starts at the densest feature"))
st.subheader(f"Feature {f} — top token {stats.top_token(f)!r}")
st.plotly_chart(stats.feature_figure(f), key="feature-figure")
st.html(stats.context_html(f))  # the tokens are escaped by context_html
st.dataframe(stats.contexts_frame(f), hide_index=True, key="contexts")
