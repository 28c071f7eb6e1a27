"""diffclf: diffusion models as image classifiers.

Layers (imports run downward only; ``docs/ARCHITECTURE.md``): the method in plain torch
(``diffusion``, ``strategies``, ``models``, ``metrics``), Lightning data modules and tasks (``data``,
``tasks``), and the command line (``cli``; presets in ``configs``).
"""
