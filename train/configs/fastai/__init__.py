"""fastai UNet experiments: base.py holds the typed defaults, every other file one experiment as a small delta."""
