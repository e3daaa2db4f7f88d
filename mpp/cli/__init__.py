"""The `mpp` command line."""
