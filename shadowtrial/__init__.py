"""The `shadowtrial` command line: `serve`, and the commands other parts add."""
