"""Token maps: prompt → generation → which prompt tokens explain each generated token (raw, after causal-inference
removal, filtered)."""

import json

import streamlit as st

from workbench.runner import run_analysis
from workbench.tam import text_token_maps
from workbench.tam.core import ECI_WEIGHTS
from workbench.tam.plots import shown
from workbench_analyses.token_maps import EXAMPLES, TokenMapsConfig
from workbench_app.common import guard, model, run, show_result

st.set_page_config(page_title="Token maps · workbench", layout="wide")
st.title("Token maps")
lm = model()
prompt = st.text_area("Prompt", EXAMPLES[1], key="prompt")
c1, c2, c3, c4 = st.columns(4)
max_new = c1.slider("Tokens to generate", 1, 32, 8, key="max_new")
kernel = c2.selectbox("Filter width", [1, 3, 5], index=1, key="kernel")
weights = c3.selectbox("ECI weights", list(ECI_WEIGHTS), key="eci_weights",
                       help="reference: an earlier generated token is weighted at the position that generated it "
                            "(xmed-lab/TAM); own_position: at its own position (a deviation)")
chat = c4.checkbox("Chat template", False, key="chat", disabled=not getattr(lm.tokenizer, "chat_template", None),
                   help="lay the prompt out as a user turn (the reference's layout); maps cover the user's text")
if st.button("Generate and map", key="go", type="primary", disabled=not prompt.strip()):
    st.session_state["tam_maps"] = run("Token maps", text_token_maps, lm, prompt, max_new_tokens=max_new,
                                       kernel_size=kernel, chat_template=chat, eci_weights=weights, spinner=False)
maps = st.session_state.get("tam_maps")
if maps is not None:
    fig = maps.figure()
    st.plotly_chart(fig, key="strips")
    left, right = st.columns(2)
    left.download_button("Download JSON", json.dumps({
        "prompt": prompt, "prompt_tokens": maps.prompt_tokens, "generated_tokens": maps.generated_tokens,
        **{s: maps.stage(s).tolist() for s in ("raw", "eci", "filtered")}}), file_name="token_maps.json",
        mime="application/json", key="maps-json")
    right.download_button("Download HTML", fig.to_html(include_plotlyjs=True), file_name="token_maps.html",
                          mime="text/html", key="maps-html")
    t = st.selectbox("Generated token", list(range(len(maps.generated_tokens))), key="step",
                     format_func=lambda i: f"{i}: {shown(maps.generated_tokens[i])}")
    with guard("Token"):
        step = maps.step(t)
    st.dataframe({"prompt token": [shown(x) for x in maps.prompt_tokens], "raw": step["raw"].tolist(),
                  "after ECI": step["eci"].tolist(), "filtered": step["filtered"].tolist()}, hide_index=True,
                 key="step-table")
    st.subheader("Which input explains this output")
    st.dataframe([{"generated token": f"{r['step']}: {shown(r['output'])}",
                   **{label: f"{shown(r[s]['token'])} ({100 * r[s]['share']:.0f}%)"
                      for s, label in (("raw", "raw"), ("eci", "after ECI"), ("filtered", "filtered"))}}
                  for r in maps.top_inputs()], hide_index=True, key="explain")

st.header("Does it point at the right input?")
st.caption("The token_maps analysis: copy/recall prompts the model answers correctly; how often each map's argmax "
           "is the recalled token, against gradient × input and chance (≈ 35 s on SmolLM2).")
n_eval = st.slider("Copy/recall candidates", 6, 150, 90, step=3, key="n_eval")
if st.button("Run the evaluation", key="evaluate"):
    with guard("Config"):
        config = TokenMapsConfig(prompts=[prompt], max_new_tokens=max_new, kernel_size=kernel, eval_prompts=n_eval,
                                 chat_template=chat, eci_weights=weights)
    st.session_state["tam_result"] = run("Evaluation", run_analysis, lm, "token_maps", config, progress=True)
if "tam_result" in st.session_state:
    show_result("token_maps", st.session_state["tam_result"], lm=lm)
