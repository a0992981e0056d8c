"""Rewards and judges: accuracy (behind one `Judge` interface), format, and the resize penalty."""
