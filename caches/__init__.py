"""Training-free cache models on a FAISS index (Tip-Adapter, APE, TIP-X/SuS-X, GDA)."""
