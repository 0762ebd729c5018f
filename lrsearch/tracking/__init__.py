"""The tracking layer: what a study's results become outside Optuna.

``tracker`` is the observer in the tune process that sends each event to the tracking process (``process``), which
writes MLflow runs through ``recorder``; ``runs`` says what a trial's run holds (tags, params, metrics, timestamps),
``mirror`` makes MLflow match the study after any failure (``lrsearch sync``), ``viewer`` serves the MLflow UI on it,
``plots`` draws the study's figures and the LR range test's curves, and ``export`` turns a trial into the
configuration users load in one line (JSON, YAML or torch code).
"""

__all__ = ["export", "mirror", "plots", "process", "recorder", "runs", "tracker", "viewer"]
