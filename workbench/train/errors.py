"""The training package's errors (one module, so that recipes, methods and run folders share them)."""


class RecipeError(ValueError):
    """A recipe with an unknown key, a wrong-typed value or an inconsistent combination."""


class RunFolderError(ValueError):
    """A training run folder that is missing, unfinished or corrupt."""
