"""Build-time tools (man pages, shell completion, the packaged NetworkManager hook): run from the source tree,
not installed (pyproject.toml's packages.find include leaves them out)."""
