"""Seamless logical patches: a patch larger than a compute block is segmented block by block and
stitched so that the result is what segmenting it in one piece gives (``docs/semantics.md``).

The pieces are pure numpy: :mod:`.blocks` (cores and windows), :mod:`.stitch` (ownership, global
numbering, composition), :mod:`.regions` (boundaries and repair of one core with its margin) and
:mod:`.serial` (the steps in one process: the definition the engine must equal). The engine runs
them as Dask tasks (:mod:`codexdask.engine.logical`).
"""
