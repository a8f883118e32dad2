"""Super-class prototypes for SBE: :mod:`cdclip.prototypes.superclass` (imported on demand)."""
