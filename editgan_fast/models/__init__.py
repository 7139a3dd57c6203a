"""Models: generator, segmenter, encoder, LPIPS, and their checkpoint loaders."""
