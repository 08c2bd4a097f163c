"""Names of the compile stages and artifacts (no JAX import: the CLI reads them at startup)."""

STAGES = ("load", "check", "ir", "lower", "compile")
EMITS = ("spec", "plan", "stablehlo", "cost", "exported")
