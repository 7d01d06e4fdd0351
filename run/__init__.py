"""Torch-free code the engine, the CLI and the dashboard share: the wire vocabulary, the run
store reader, the control client, the runs directory and the run options."""
