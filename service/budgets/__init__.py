"""Budgets: limits per scope and period, evaluated against the rollups."""
