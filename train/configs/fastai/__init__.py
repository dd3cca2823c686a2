"""fastai UNet experiments: base.py holds the typed defaults and the loader, _gpu_recipe.py the large GPU models'
shared recipe, and every experiment (one file each, a small delta) sits in one of three groups: recipes/ (GPU),
cpu/ and ablations/ (benchmarks). `python -m train.fastai_unet --list` shows them by group."""
