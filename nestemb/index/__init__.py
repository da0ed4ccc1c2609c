"""nestemb.index."""
