"""Testing tools: a random spec generator, an independent evaluator, the differential harness."""
