"""Schemas of the Seldon Core v2 kinds, quantities, names and conditions."""
