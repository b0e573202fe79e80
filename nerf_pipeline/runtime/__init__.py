"""What carries the stages but cannot change their outputs: CLI, atomic writes, signals, errors, MLflow."""
