"""cdclip.kernels"""
