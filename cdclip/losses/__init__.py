"""cdclip.losses"""
