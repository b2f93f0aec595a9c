"""The `cifarflow` command line: one module per verb, wired in `main`."""
