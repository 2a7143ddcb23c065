"""Shipped specs (package data)."""
