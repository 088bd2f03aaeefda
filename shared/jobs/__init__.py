"""The job wing: everything that creates, reads, changes or encodes a job."""
