"""Reports a person looks at: `explore` (the data) and `errors` (a run's mistakes) for both tasks.

Each report is a plain function over a pack or a CSV that returns its numbers and its pictures (PNG bytes),
so the command line writes them to a folder and a served page can show the same pictures.
"""
