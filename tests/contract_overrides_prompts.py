"""Fast configs of the prompt learners for the contract matrix (tests/contract_overrides.py)."""
OVERRIDES = {
    "coop": {"epochs": 2},
    "cocoop": {"epochs": 1, "batch_size": 8},
    "kgcoop": {"epochs": 2},
    "defo": {"epochs": 2, "n_queries": 8, "n_ctx": 4},
    "maple": {"epochs": 1},
}
