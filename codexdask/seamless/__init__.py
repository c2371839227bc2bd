"""Seamless logical patches: a patch larger than a compute tile is segmented tile by tile and
stitched so that the result is what segmenting it in one piece gives (``docs/semantics.md``).

The pieces are pure numpy: :mod:`.grid` (cores and windows), :mod:`.stitch` (ownership, global
numbering, composition) and :mod:`.regions` (boundaries and repair of one core with its margin).
The engine runs them as Dask tasks.
"""
