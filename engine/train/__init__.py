"""Training from the pretrained base: one locale's classifier (``finetune``), several locales
trained together and merged every few steps (``periodic``). One loop (``loop.Trainer``) serves
these and the demo builder."""
