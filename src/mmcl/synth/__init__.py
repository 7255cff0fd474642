"""The synthetic worlds' shared drawing and box library (core layer, imports nothing else of mmcl).

:mod:`mmcl.synth.draw`: the palette and the glyphs; :mod:`mmcl.synth.boxes`: box geometry and the
box text every benchmark writes and every scorer reads. Every embedded benchmark and every
pre-training recipe draws through this package, so that a scene is drawn in one place. See
docs/data.md.
"""
