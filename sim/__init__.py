"""Simulated meters and head-end for development and tests."""
