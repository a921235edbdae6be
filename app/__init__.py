"""Streamlit dashboard (see issue 8); pages call the workbench API only."""
