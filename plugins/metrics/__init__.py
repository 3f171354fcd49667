"""First-party components; registered only through entry points."""
