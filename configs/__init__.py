"""The recipes (`*.yaml`) and their schemas (`configs.schema`): structured configs every layer imports,
importing none of them."""
