"""RideChain's benchmark suite (`./run bench [--quick]`): ratios measured side by side."""
