"""The shared training loop: seeded, resumable, gradient-maskable; loss curves per data part."""
