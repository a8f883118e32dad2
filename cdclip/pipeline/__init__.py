"""cdclip.pipeline"""
