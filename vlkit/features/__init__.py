"""The feature store (frozen-encoder features on disk, keyed by content), text weights and the FAISS vector index."""
