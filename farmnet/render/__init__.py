"""The render host: runs tasks for the server and reports their output and results."""
