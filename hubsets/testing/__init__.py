"""Fixtures, not the library: generators of fake upstream releases in the shapes each builder reads
(`samples.make_skvqa`, `make_allava`, `make_kale`, ...), photo-like and hostile images (`bomb_png`), and
a loopback image server for fetch tests (`samples.ImageServer`).

Tests, benchmarks and `hubsets demo` import them; nothing under `hubsets.build`, `hubsets.loader` or
`hubsets.server` does. Shipped in the wheel so that `hubsets demo` works without a checkout.
"""
