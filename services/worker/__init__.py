"""The worker service: runs @task functions in a thread pool."""
