"""`doctor`: is every master alike, and is this node set up to run exactly one scheduler."""
