"""The Streamlit dashboard (``make app``): ``Home.py`` and one script per page in ``pages/``, sharing ``common.py``
(model picker, progress with Cancel, result display and downloads). Pages call the workbench API only."""
