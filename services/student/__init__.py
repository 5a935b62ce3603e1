"""Student: the ViT trained from teacher interaction maps, and its synthetic data."""
