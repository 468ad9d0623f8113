"""`make bench`: SAMD benchmarks, each figure beside a reference measured in the same run (docs/architecture.md, performance measurements).

Run all suites with `python -m bench` (from the repository root), or name them:
`python -m bench artifact`. Each suite prints a table and rewrites its own section of
docs/benchmarks.md, leaving the other suites' sections as they are.
"""
