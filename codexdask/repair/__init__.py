"""The repair: each cell matched to its nucleus, in plain numpy (``docs/semantics.md``).

- :mod:`.boundaries` — ``get_boundary`` and the inner-boundary pixels;
- :mod:`.masks` — ``repair_masks`` and ``repair_masks_batch`` on whole images;
- :mod:`.matching` — the same repair in parts (tally, match, assemble) for regions;
- :mod:`.bands` — the greedy matching band by band, for logical patches;
- :mod:`.kernels` — runs, sums by key and the greedy pass; :mod:`.counts` — counts and ratios.
"""
