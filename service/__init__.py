"""finops-svc: meters the cost of AI inference calls and guards budgets."""
