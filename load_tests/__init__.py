"""Load tests of the chat service: virtual participants over real WebSockets (issue 6).

`python -m load_tests --help` documents the command; docs/benchmarks.md the results.
"""
