"""The multi-host namespace lab."""
