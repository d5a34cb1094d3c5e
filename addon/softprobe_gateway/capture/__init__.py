"""An exchange as both processes see it: plain data taken by the proxy's hooks (`exchange`),
encoded into span attributes in the worker (`encoding`, `redaction`, with
`secret_rules` and `prefilter`)."""
