"""The method itself: plain Python and torch, no Ray."""
