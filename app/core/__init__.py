"""Everything that decides and measures. Never imports Qt (enforced by import-linter in `make test`)."""
