"""Pure decisions over plain data, tested without a proxy: what is recorded (rules), what a
mock answers, trace context and sessions, which TLS connections are intercepted."""
