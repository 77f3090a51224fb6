"""vlkit-mini's shipped image-tower weights (fp16 safetensors) and training record."""
