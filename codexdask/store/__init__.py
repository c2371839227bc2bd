"""From a slide to a patch store: channels, placement, QC statistics and the stores.

- :mod:`.slide` — a slide's channels by name and windows of its two-channel input
  (:mod:`.channels` forms the whole-cell channel);
- :mod:`.placement` — where the patches of each split mode lie;
- :mod:`.selection` — QC statistics, flags, informative indices and batches;
- :mod:`.patch_store` — write and open ``NAME.zarr`` (patches, or the slide of logical patches);
- :mod:`.slide_store` — the slide written whole, window by window, for logical patches.
"""
