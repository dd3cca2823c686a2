"""Whole slides: the slide reader and pyramid writer, FTU polygons, slide prediction (`python -m inference.wsi`)."""
