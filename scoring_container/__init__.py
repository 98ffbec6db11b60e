"""The scoring container: one Batch task scores one unit of one hour."""
