"""The data engine: the synthetic world, the frame catalog, mining, labeling interchange, the loop."""
