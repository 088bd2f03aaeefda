"""The scheduler service: one active instance places ready jobs on workers."""
