"""Analyses: any registered analysis (the same registry as the CLI), its config edited as JSON (file paths in it only
inside the allowed roots)."""

import json

import streamlit as st

from workbench import registry
from workbench.runner import run_analyses
from workbench_app.common import config_paths, guard, model, prompts_input, run, show_result

st.set_page_config(page_title="Analyses · workbench", layout="wide")
st.title("Analyses")
lm = model()
names = registry.names()
name = st.selectbox("Analysis", names, key="name",
                    format_func=lambda n: f"{n} — {registry.get(n).description}")
spec = registry.get(name)
defaults = {k: v for k, v in spec.config().to_dict().items() if k != "kind"}
text = st.text_area("Config (JSON; the defaults are filled in)", json.dumps(defaults, indent=1), height=260,
                    key=f"config-{name}")
texts = prompts_input("analyses") if spec.sites is not None else None
if st.button("Run", key="go", type="primary"):
    with guard("Config"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the config is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    config_paths(data)  # prompt / pair files named in the config: only inside the allowed roots
    with guard("Config"):
        config = spec.config.from_dict(data)
    st.session_state["any_result"] = (name, run(name, run_analyses, lm, {name: config}, texts=texts,
                                                progress=True)[name])
if "any_result" in st.session_state and st.session_state["any_result"][0] == name:
    show_result(name, st.session_state["any_result"][1], lm=lm)
