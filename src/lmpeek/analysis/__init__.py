"""Pure functions on arrays (torch tensors or numpy): no hooks, no HTTP, no files."""
