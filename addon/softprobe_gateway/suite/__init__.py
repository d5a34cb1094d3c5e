"""`softprobe suite`: Softprobe suite files run against a runtime and an app (CLI process only)."""
