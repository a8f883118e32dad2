"""cdclip.refine"""
