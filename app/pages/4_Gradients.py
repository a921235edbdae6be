"""Gradients: layer-wise gradient spectra of the attention projections for two datasets side by side."""

import json
import tempfile
from pathlib import Path

import streamlit as st

from workbench.prompts import PAIR_SETS, parse_pairs
from workbench.runner import run_analysis
from workbench_analyses.gradient_spectra import ATTENTION, GradientSpectraConfig
from workbench_app.common import guard, model, run, show_result, uploaded

st.set_page_config(page_title="Gradients · workbench", layout="wide")
st.title("Gradients")
lm = model()


def dataset(column, key: str, default: str) -> tuple[str, str] | None:
    """(label, source) of one dataset: a bundled pair set or an uploaded JSONL of {"prompt", "response"}."""
    options = [f"bundled:{name}" for name in PAIR_SETS] + ["upload"]
    choice = column.selectbox(f"Dataset {key}", options, index=options.index(default), key=f"ds-{key}")
    if choice != "upload":
        return choice.split(":", 1)[1], choice
    pairs = uploaded(column, 'A .jsonl of {"prompt": ..., "response": ...}', ["jsonl"], f"up-{key}", parse_pairs)
    if pairs is None:
        return None
    # the analysis reads datasets from paths: the checked pairs go to a private temporary file
    path = Path(tempfile.mkdtemp(prefix="workbench-upload-")) / f"dataset-{key}.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs))
    column.caption(f"{len(pairs)} pairs")
    return f"upload {key}", str(path)


left, right = st.columns(2)
a, b = dataset(left, "A", "bundled:instruction"), dataset(right, "B", "bundled:reasoning")
c1, c2, c3 = st.columns(3)
samples = c1.slider("Samples per dataset", 1, 40, 8, key="samples")
projections = c2.multiselect("Projections", list(ATTENTION), default=list(ATTENTION), key="projections")
shuffled = c3.checkbox("Add the shuffled-response control", value=False, key="shuffled")
ready = a is not None and b is not None and a[0] != b[0] and bool(projections)
if a and b and a[0] == b[0]:
    st.warning("Pick two different datasets.")
if st.button("Compute gradients", key="go", type="primary", disabled=not ready):
    with guard("Config"):
        config = GradientSpectraConfig(datasets={a[0]: a[1], b[0]: b[1]}, projections=projections,
                                       max_samples=samples, shuffled_control=shuffled)
    st.session_state["grad_result"] = run("Gradients", run_analysis, lm, "gradient_spectra", config, progress=True)
if "grad_result" in st.session_state:
    show_result("gradient_spectra", st.session_state["grad_result"], lm=lm)
