"""Training: fastai and mmsegmentation trainers that write self-describing checkpoint folders."""
