"""Dataset-card templates (data files, shipped in the wheel)."""
