"""A small task package used by the subprocess tests (CLI, crashes, discover)."""
