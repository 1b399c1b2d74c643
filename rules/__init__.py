"""The shipped mapping rules (single copy; shipped inside the package as ``connector.rules``). The rule
files are YAML; this file only makes the directory package data."""
