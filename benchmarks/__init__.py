"""Benchmarks that run the product against real infrastructure and print numbers (nothing is asserted)."""
