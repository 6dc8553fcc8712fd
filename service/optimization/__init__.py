"""Cost optimization suggestions: ranked, checkable ways to spend less."""
