"""Small real servers for examples, tests and the README's run command."""
