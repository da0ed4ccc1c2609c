"""nestemb.train."""
