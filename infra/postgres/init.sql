-- One PostgreSQL for both control planes: MLflow's tracking/registry and Prefect's server.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
