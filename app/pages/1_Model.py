"""Model: architecture summary and the weight spectra heat-map."""

import streamlit as st

from workbench.runner import run_analysis
from workbench_analyses.weight_spectra import WeightSpectraConfig
from workbench_app.common import model, run, show_result

st.set_page_config(page_title="Model · workbench", layout="wide")
st.title("Model")
lm = model()
st.subheader("Architecture")
st.dataframe([{"fact": k, "value": str(v)} for k, v in lm.facts.to_dict().items()], hide_index=True, key="facts")
st.subheader("Weight spectra")
embeddings = st.checkbox("Include W_E and W_U (the slowest part: two d_vocab × d_model SVDs)", value=False,
                         key="embeddings")
if st.button("Compute weight spectra", key="go", type="primary"):
    st.session_state["model_result"] = run("Weight spectra", run_analysis, lm, "weight_spectra",
                                           WeightSpectraConfig(include_embeddings=embeddings))
if "model_result" in st.session_state:
    show_result("weight_spectra", st.session_state["model_result"], lm=lm)
