"""Server-side training: backbone registry, weights, freeze policies, feature cache, fine-tune loop."""
