"""nestemb.text."""
