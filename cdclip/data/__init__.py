"""cdclip.data"""
