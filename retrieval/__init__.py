"""Retrieval: ingestion, embeddings, the vector store, hybrid search and conflict detection between passages."""
