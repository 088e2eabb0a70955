r"""CoopFlow for ebmkit: a recipe over core parts (see README.md); it registers no component."""
