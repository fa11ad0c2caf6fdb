"""`make bench`: throughput and latency figures against the DESIGN.md budgets."""
