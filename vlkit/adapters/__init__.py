"""Feature-level adapters trained from the feature store (CLIP-Adapter, ZS-LP, LP++)."""
