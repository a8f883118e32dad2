"""cdclip.prototypes"""
