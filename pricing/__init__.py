"""Pure domain core: data contract, simulator, optimizer, guardrails, exploration, evaluation.

Imports numpy and pandas only (never prefect, mlflow, torch or fastapi); a test enforces it.
"""
