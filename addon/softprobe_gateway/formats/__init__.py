"""Formats recordings travel in: OTLP spans (the protocol's attributes), Softprobe case files, HAR."""
