"""numpy ports of diffusers' schedulers (filled in by the schedulers work)."""
