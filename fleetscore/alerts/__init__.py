"""Alerts: rules (rules.py), what an hour raises (evaluate.py), the records that make each
alert happen once (records.py), and delivery to sinks (deliver.py)."""
