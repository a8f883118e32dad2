"""cdclip.affinity"""
