"""Losses: balanced segmentation CE (``L_seg``), WeCLIP affinity loss (``L_aff``), SBE boundary loss (``L_be``).

Modules: :mod:`cdclip.losses.segmentation`, :mod:`cdclip.losses.affinity`, :mod:`cdclip.losses.boundary`
(imported on demand; nothing is imported here).
"""
