"""Text facts shared by every layer: one module per fact (sentences, numbers and quantities, terms)."""
