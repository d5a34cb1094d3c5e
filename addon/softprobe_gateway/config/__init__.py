"""The YAML configuration: its schema, the loader, and the validation the schema drives."""
