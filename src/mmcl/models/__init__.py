"""Models: the tiny LLaVA preset, loading, tokenizer and pre-training."""
