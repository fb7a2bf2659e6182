"""Training scripts in TRL's style (`trl.scripts`): what the recipes in `recipes/` run, importable from the package."""
