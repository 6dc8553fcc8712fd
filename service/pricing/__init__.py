"""Provider prices: the bundled catalog, its table, and the cost calculator."""
