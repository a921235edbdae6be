"""The dashboard's landing page: what each page does and every registered analysis (``make app``)."""

import streamlit as st

from workbench import registry
from workbench_app.common import model

st.set_page_config(page_title="workbench", layout="wide")
st.title("workbench")
st.write("Interpretability and spectral analysis of transformer language models. Pick a model in the sidebar "
         "(the bundled SmolLM2-135M-Instruct by default, or a local folder), then a page on the left.")
lm = model()
st.markdown("""
| Page | What it shows |
|---|---|
| Model | architecture summary and the weight spectra heat-map |
| Activations | effective rank and RankMe per layer for prompts you pick, paste or upload |
| Dynamics | a generation's effective-rank curve and its velocity / acceleration (ERV / ERA) per layer |
| Gradients | layer-wise gradient spectra of two datasets side by side |
| Patching | the IOI patching heat-map and DAS with the interpretability-illusion diagnostics |
| Steering and edits | contrast vectors, live steering, Steer2Edit edits applied and reverted, the trade-off sweep |
| Token maps | which prompt tokens explain each generated token (TAM) |
| Analyses | any registered analysis with its config as JSON |
| Reports | open past JSON reports and compare two |
| Sweeps | a sweep folder's cells compared: each metric per layer and against checkpoint step, and their status |
| Features | an SAE's features (trained here or loaded from sae-lens): top contexts, logit effects, search by token |
""")
st.subheader("Registered analyses")
st.dataframe([{"analysis": n, "description": registry.get(n).description,
               "in the default report": registry.get(n).in_default_report} for n in registry.names()],
             hide_index=True, key="analyses")
