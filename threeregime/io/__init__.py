"""Files: atomic writes, safe checkpoint reads, and the locks of live runs and jobs."""
