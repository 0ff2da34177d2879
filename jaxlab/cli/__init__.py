"""The `jaxlab` command and what only it uses.

`commands` (the entry point, `main`), `flags` (each command's absl flags), `config` (the
recorded config a later command reuses), `bench` (`jaxlab bench`) and `demo` (`jaxlab demo`).
Bundles (`jaxlab export`) are `jaxlab.core.bundle`; run records `jaxlab.core.run_records`.
"""
