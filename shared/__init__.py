"""Switchyard's shared core: settings, schema, messages, topology, task registry."""
