"""GPU recipes: the models a GPU user trains for a submission, most of them small deltas over _gpu_recipe.py."""
