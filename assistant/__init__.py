"""The chat engine: prompt building, generation backends, citations, conflict-aware answering, logging."""
