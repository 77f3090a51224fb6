"""Fast configs of the domain-adaptation methods for the contract matrix and the label guard.

DAPrompt keeps every target image (tau = 0) so the masked target loss always runs on the
random-init test-tiny model, whose zero-shot probabilities rarely reach 0.5.
"""
OVERRIDES = {
    "daprompt": {"epochs": 2, "tau": 0.0},
    "self-training-cache": {"search_steps": (20, 5)},
}
