"""What people look at: figures, HTML tables, the progress of a run and its cost."""
