from e2urec.cli import app

app(prog_name="e2urec")
