"""fastai UNet experiments: base.py holds the typed defaults, _gpu_recipe.py the large GPU models' shared recipe,
every other file one experiment as a small delta."""
