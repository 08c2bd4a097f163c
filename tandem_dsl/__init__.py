"""tandem-dsl: the spec language (load, validate, resolve, check). Imports no JAX."""
