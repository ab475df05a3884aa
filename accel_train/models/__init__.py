"""The model: Gemma 3 (gemma3.py), its fused loss, what it costs in FLOPs and activation memory, and the
mapping to and from HuggingFace's Gemma 3. Nothing here knows about data files, checkpoints or the loop."""
