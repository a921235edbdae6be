"""Steering and edits: contrast vectors from two prompt sets, a generation steered live, Steer2Edit rank-1 edits
applied to the weights and reverted exactly, and the steering-vs-editing trade-off sweep.

Edits are per browser tab: the edit goes to this tab's own deep copy of the cached model (``own_model``; twice the
model's memory until the revert), so other tabs keep computing with the unedited weights."""

import streamlit as st

from workbench.intervene.edit import apply_edits, steer2edit
from workbench.intervene.readout import greedy_continuations
from workbench.intervene.steer import SPANS, contrast_vectors, steering, vector_steers
from workbench.runner import run_analysis
from workbench.tasks.sentiment import sentiment_pairs
from workbench_analyses.steer2edit import Steer2EditConfig
from workbench_app.common import drop_own_model, exclusive, guard, model, own_model, run, show_result

st.set_page_config(page_title="Steering and edits · workbench", layout="wide")
st.title("Steering and edits")
lm = model()
pairs = sentiment_pairs()[:10]

st.header("1. Vectors from two prompt sets")
left, right = st.columns(2)
pos = left.text_area("Positive set (one per line)", "\n".join(p for p, _ in pairs), height=200, key="pos")
neg = right.text_area("Negative set (one per line)", "\n".join(n for _, n in pairs), height=200, key="neg")
layers = st.multiselect("Layers", list(range(lm.facts.n_layers)), default=list(range(lm.facts.n_layers)),
                        key="layers")
span = st.radio("Average over", list(SPANS), horizontal=True, key="span", help="all tokens of each text, or its last")
pos_texts = [t for t in pos.splitlines() if t.strip()]
neg_texts = [t for t in neg.splitlines() if t.strip()]
if st.button("Build vectors", key="build", type="primary", disabled=not (pos_texts and neg_texts and layers)):
    st.session_state["vectors"] = run("Contrast vectors", contrast_vectors, lm, pos_texts, neg_texts,
                                      layers=layers, span=span)
vectors = st.session_state.get("vectors")
if not vectors:
    st.stop()
st.caption(f"Vectors for layers {sorted(vectors)} (mean positive − mean negative of the attention, MLP and "
           f"residual outputs).")

st.header("2. Steer a generation")
prompt = st.text_input("Prompt", "The movie I watched last night was", key="prompt")
c1, c2, c3 = st.columns(3)
alpha = c1.slider("α (× the raw per-layer vector, every position; the paper's code sweeps 0.1–1.5)", 0.0, 3.0, 1.0,
                  0.05, key="alpha")
where = c2.radio("Where", ["components", "resid"], horizontal=True, key="where")
max_new = c3.slider("Tokens", 4, 64, 24, key="max_new")


def generate(steers=()):
    with exclusive(lm), steering(lm, list(steers)):  # hooks on a shared model: one tab at a time
        return lm.tokenizer.decode(greedy_continuations(lm, [prompt], max_new_tokens=max_new)[0],
                                   skip_special_tokens=True)


if st.button("Generate", key="generate", disabled=not prompt.strip()):
    with guard("Steering"):
        st.session_state["steered"] = (generate(), generate(vector_steers(vectors, alpha, where=where)), alpha)
if "steered" in st.session_state:
    base, steered, used = st.session_state["steered"]
    left, right = st.columns(2)
    left.markdown("**Unsteered**")
    left.text(prompt + base)  # as plain text: a continuation may hold markdown characters
    right.markdown(f"**Steered, α = {used}**")
    right.text(prompt + steered)

st.header("3. Steer2Edit: the vectors as rank-1 weight edits")
rho = st.slider("ρ (sparsity: larger edits fewer components)", 0.05, 0.95, 0.6, 0.05, key="rho")
edit_kind = st.radio("Edit", ["heads and neurons", "heads only", "neurons only"], horizontal=True, key="edit_kind",
                     help="The other component type gets ρ = −1 (not edited), as the paper's published grids do")
handle = st.session_state.get("edit_handle")
if handle is not None and handle.active:
    heads = sum(e.kind == "head" for e in handle.edits)
    st.warning(f"The loaded model is edited ({heads} heads, {len(handle.edits) - heads} neurons) in this tab's own "
               f"copy: every page uses the edited weights in this tab until you revert; other tabs are unaffected.")
    if "edited_text" in st.session_state:
        st.markdown("**With the edit** (no hooks attached)")
        st.text(prompt + st.session_state["edited_text"])
    if st.button("Revert the edit", key="revert", type="primary"):
        handle.revert()
        for name in ("edited_text", "edit_handle"):
            st.session_state.pop(name, None)
        drop_own_model()  # back to the shared cached model (the copy is freed)
        st.success("Weights restored bit for bit.")
        st.rerun()
elif st.button("Apply the edit", key="apply", type="primary"):
    with guard("Steer2Edit"):
        with exclusive(lm):  # read and copied while no other tab has it hooked or transiently truncated
            edits = steer2edit(lm, vectors, rho=-1.0 if edit_kind == "neurons only" else rho,
                               rho_mlp=-1.0 if edit_kind == "heads only" else rho)
            if not edits:
                st.info(f"No component passes the threshold at ρ = {rho}: nothing to edit (lower ρ).")
                st.stop()
            lm = own_model(lm)  # this tab's copy: other tabs keep the cached, unedited model
        st.session_state["edit_handle"] = apply_edits(lm, edits)
        st.session_state["edited_text"] = generate()
    st.rerun()

st.header("4. Trade-off: steering strength vs edit sparsity")
n_eval = st.slider("Neutral prompts measured", 4, 40, 12, key="n_eval")
if st.button("Run the Steer2Edit sweep", key="sweep", disabled=handle is not None and handle.active):
    with guard("Config"):
        config = Steer2EditConfig(layers=sorted(vectors), eval_prompts=n_eval, alphas=[0.1, 0.5, 1.0],
                                  rhos=[0.8, 0.6, 0.4])
    st.session_state["s2e_result"] = run("Steer2Edit sweep", run_analysis, lm, "steer2edit", config)
if "s2e_result" in st.session_state:
    show_result("steer2edit", st.session_state["s2e_result"], lm=lm)
