"""The build wing: `hubsets build NAME --source RAW --out DIR`.

- `driver`: plan, schedule the tasks (local processes or Ray), collect their records, drop duplicate
  ids, write rejects, manifest and card. It never reads image bytes.
- `task`: one task: read a slice of the upstream release through the builder, validate, check images,
  tag filters, and write its rows straight into the final shards of each partition it touches.
- `shards`: the partitioned parquet writer a task uses (encoding, row groups, file roll-over).
- `dedupe`: duplicate ids across tasks, from the ids each task records (columnar, hash-bucketed).
- `ray_runner`: the same tasks on a Ray cluster.
"""

from hubsets.build.driver import build, config_files

__all__ = ["build", "config_files"]
