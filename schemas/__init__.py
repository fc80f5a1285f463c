"""JSON Schemas for hubsets records, per-dataset meta and the manifest (data files, shipped in the wheel)."""
