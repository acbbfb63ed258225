"""MLflow tracking and model registry: log, register, alias, promote, roll back, load.

Named ``edgefleet.mlflow`` (not a top-level ``mlflow``) so it never shadows the MLflow library.
Modules here import the library as ``import mlflow`` thanks to absolute imports.
"""
