"""The `jaxlab` command and what only it uses.

`commands` (the entry point, `main`), `flags` (each command's absl flags), `config` (the
recorded config a later command reuses), `run_records` (provenance and TensorBoard records),
`export` (bundles), `bench` (`jaxlab bench`) and `demo` (`jaxlab demo`).
"""
