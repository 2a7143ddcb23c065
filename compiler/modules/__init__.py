"""The module library the compiler lowers specs into."""
