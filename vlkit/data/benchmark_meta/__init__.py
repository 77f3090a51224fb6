"""Data files of the 11 few-shot benchmarks (one JSON per dataset), read by ``vlkit.data.coop_suite``."""
