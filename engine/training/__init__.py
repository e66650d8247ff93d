"""Tolaria, Kasmina and Tamiyo: the training loop, its seed slots, and the controller that grows the host."""
