"""Activations: capture the prompts you pick at the sites you pick; effective rank and RankMe per layer."""

import streamlit as st

from workbench.runner import run_analyses
from workbench_analyses.activation_spectra import KINDS, ActivationSpectraConfig
from workbench_analyses.rankme import RankMeConfig
from workbench_app.common import model, prompts_input, run, show_result

st.set_page_config(page_title="Activations · workbench", layout="wide")
st.title("Activations")
lm = model()
texts = prompts_input("act")
kinds = st.multiselect("Sites (every layer)", list(KINDS), default=["resid_post"], key="kinds")
max_tokens = st.number_input("Token budget (0 = all)", min_value=0, value=4000, step=500, key="max_tokens")
if st.button("Capture and analyse", key="go", type="primary", disabled=not texts or not kinds):
    configs = {"activation_spectra": ActivationSpectraConfig(kinds=kinds),
               "rankme": RankMeConfig(prompt_sets={"selected prompts": "report"}, site_kind=kinds[0])}
    st.session_state["act_results"] = run("Capture", run_analyses, lm, configs, texts=texts,
                                          max_tokens=int(max_tokens) or None, progress=True)
results = st.session_state.get("act_results")
if results:
    spectra = results["activation_spectra"]
    st.subheader("Per layer")
    st.dataframe({"site": spectra.site, "layer": spectra.layer, "effective rank (centred)": spectra.erank_centred,
                  "RankMe (centred)": spectra.rankme_centred, "tokens": spectra.n_rows}, hide_index=True,
                 key="per-layer")
    show_result("activation_spectra", spectra, lm=lm)
    show_result("rankme", results["rankme"], lm=lm)
