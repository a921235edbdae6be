"""Patching: the IOI task, a layer × position activation-patching heat-map, and DAS subspace patching with the
interpretability-illusion diagnostics."""

import streamlit as st

from workbench.runner import run_analysis
from workbench_analyses.subspace_patching import SubspacePatchingConfig
from workbench_app.common import guard, model, run, show_result

st.set_page_config(page_title="Patching · workbench", layout="wide")
st.title("Patching")
lm = model()
st.selectbox("Task", ["IOI: the position feature of the indirect object"], key="task",
             help="The task whose patching is studied (the analysis first checks that the model does it)")
layers = ["auto (before the name-mover-like heads)"] + list(range(lm.facts.n_layers))
c1, c2, c3 = st.columns(3)
layer = c1.selectbox("DAS layer", layers, key="layer")
pairs = c2.slider("IOI pairs", 8, 192, 96, step=8, key="pairs")
epochs = c3.slider("DAS epochs", 1, 60, 30, key="epochs")
heatmap_pairs = c1.slider("Heat-map pairs", 2, 32, 8, key="heatmap_pairs")
if st.button("Run patching and DAS", key="go", type="primary"):
    with guard("Config"):
        config = SubspacePatchingConfig(n_pairs=pairs, epochs=epochs, heatmap_pairs=heatmap_pairs,
                                        layer=None if isinstance(layer, str) else int(layer))
    st.session_state["patch_result"] = run("Patching", run_analysis, lm, "subspace_patching", config,
                                           progress=True)
if "patch_result" in st.session_state:
    show_result("subspace_patching", st.session_state["patch_result"], lm=lm)
