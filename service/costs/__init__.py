"""Cost questions answered from the rollups: query, summary, by service, by learner."""
