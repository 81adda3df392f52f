"""Local inference: engine service, TFLite runtime binding, tokenizer, manifests (DESIGN §5).

One module here imports the TFLite runtime; nothing else may. Arrives with issue 3.
"""
