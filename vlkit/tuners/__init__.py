"""Parameter-efficient tuners injected into the towers (LoRA, prefix, VPT, BitFit, adapters, IA3)."""
