"""Config-driven experiments that show what parameters do inside a neural network."""
