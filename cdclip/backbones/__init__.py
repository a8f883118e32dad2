"""cdclip.backbones"""
