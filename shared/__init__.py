"""Contracts shared by the lfi services. Nothing in this package imports torch."""
