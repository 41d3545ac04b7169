"""Parallelism: the one logical-axis -> mesh-axis table, meshes, and joining processes."""
