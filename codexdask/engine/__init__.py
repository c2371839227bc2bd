"""The engine: a run's plan, its Dask work on a cluster, and the driver's side of it.

- :mod:`.plan` — one frozen :class:`~codexdask.engine.plan.RunPlan` per run;
- :mod:`.runner` — :func:`~codexdask.engine.runner.run`, the public entry point;
- :mod:`.patch_graph` — a store of patches as one lazy array graph (``map_blocks`` repair);
- :mod:`.logical`, :mod:`.block_tasks`, :mod:`.work_folder` — logical patches as chains of
  futures over compute blocks, and the files those tasks hand on;
- :mod:`.tasks` — the numpy functions the patch graph's tasks call;
- :mod:`.cluster` — local, GPU and existing clusters; :mod:`.progress` — progress bars.
"""
