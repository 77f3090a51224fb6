"""Fast configs for the cache family in the contract matrix (small grids, 2 epochs)."""
OVERRIDES = {
    "tip-adapter": {"search_steps": (20, 5)},
    "tip-adapter-f": {"epochs": 2, "search_steps": (20, 5)},
    "ape": {"search_steps": (20, 5, 5)},
    "ape-t": {"epochs": 2, "search_steps": (20, 5)},
    "tip-x": {"search_steps": (5, 20, 10)},
    "gda": {},
}
