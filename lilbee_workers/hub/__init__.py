"""Models by name from a Hugging Face-compatible hub: ``pull`` downloads and verifies a
GGUF into huggingface_hub's cache; ``hf:ORG/REPO[:QUANT]`` in a config resolves from that
cache, offline (serving never downloads unless ``auto_pull`` says so)."""
