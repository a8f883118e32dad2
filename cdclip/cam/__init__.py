"""cdclip.cam"""
