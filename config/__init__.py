"""The routing YAML: schema, loading with file/line/key errors, the shipped default."""
