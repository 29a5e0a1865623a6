"""The wire: AMP commands spoken between the server, renders, monitors and tools."""
