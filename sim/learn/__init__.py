"""The learning side: data, models, per-worker gradients, random streams, compute time, memory."""
