"""The synthetic worlds' shared drawing library: palette, glyphs, boxes (core layer, imports nothing of mmcl).

Every embedded benchmark and every pre-training recipe draws through this package, so that a scene
is drawn in one place. See docs/data.md.
"""
