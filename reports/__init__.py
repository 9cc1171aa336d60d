"""Paper-style tables, figures and an index built from one study's MLflow runs (`reports.build.build_report`).

Nothing is imported here, so that mounting the CLI does not pay for mlflow, pandas and matplotlib.
"""
