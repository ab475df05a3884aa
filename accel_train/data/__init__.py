"""The data path: token files on disk (tokens.py: meta.json, the memmaps, get_batch and the training
loader), the tokenizers that make and read them, the scan of token ids against a vocabulary, and the built-in
demo corpus."""
