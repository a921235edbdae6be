"""The built-in analyses, one module (or subpackage) each, installed as ``workbench_analyses``.

Each module defines ``ANALYSIS``, an :class:`workbench.analysis.Analysis`; the distribution's ``pyproject.toml`` lists
them in the ``workbench.analyses`` entry-point group, which :mod:`workbench.registry` loads on the first lookup.
Importing this package registers nothing, and analyses never import one another.
"""
