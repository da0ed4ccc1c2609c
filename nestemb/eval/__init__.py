"""nestemb.eval."""
