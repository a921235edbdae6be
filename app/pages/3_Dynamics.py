"""Dynamics: generate from a prompt; the effective rank of the response's hidden states as it grows, and its
velocity / acceleration (ERV / ERA): headline on the final-norm output (as VERL), per block as an extension."""

import streamlit as st

from workbench.runner import run_analysis
from workbench.spectra.dynamics import VARIANTS
from workbench_analyses.erank_dynamics import DEFAULT_PROMPT, ErankDynamicsConfig
from workbench_app.common import guard, model, run, show_result

st.set_page_config(page_title="Dynamics · workbench", layout="wide")
st.title("Dynamics")
lm = model()
prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key="prompt")
left, mid, var, right = st.columns(4)
max_new = left.slider("Tokens to generate", 8, 512, 160, key="max_new_tokens")
stride = mid.slider("Stride (VERL's diff_stride)", 1, 64, 20, key="stride")
variant = var.selectbox("Prefixes (VERL code path)", list(VARIANTS), key="variant",
                        help="optimized (VERL's configured default): the last 512 tokens, prefixes of s+1, 2s+1, ... "
                             "tokens; batched (its later variant): the first 512 tokens, prefixes of s, 2s, ... tokens")
chat = right.checkbox("Wrap as a chat turn", value=True, key="chat")
if st.button("Generate and analyse", key="go", type="primary"):
    with guard("Config"):
        config = ErankDynamicsConfig(prompt=prompt, max_new_tokens=max_new, stride=stride, chat_template=chat,
                                     variant=variant)
    st.session_state["dyn_result"] = run("Generation", run_analysis, lm, "erank_dynamics", config, spinner=False)
result = st.session_state.get("dyn_result")
if result:
    st.markdown(f"**Response** ({result.n_response_tokens} tokens)")
    st.text(result.response)
    erv, era, used = st.columns(3)
    erv.metric(f"ERV, final norm ({result.final_site})", "undefined" if result.final_erv is None
               else f"{result.final_erv:.4g}")
    era.metric("ERA, final norm", "undefined" if result.final_era is None else f"{result.final_era:.4g}")
    used.metric(f"Prefixes (variant {result.variant})", f"{len(result.ks)} over {result.n_tokens_used} tokens")
    show_result("erank_dynamics", result, lm=lm)
