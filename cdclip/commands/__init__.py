"""Sub-commands of the ``cdclip`` command line (one module each)."""
