"""The tracking layer: what a study's results become outside Optuna.

``tracker`` is the observer in the tune process that sends each event to the tracking process (``process``), which
writes MLflow runs through ``recorder``; ``plots`` draws the study's figures and the LR range test's curves;
``export`` turns a trial into the configuration users load in one line (JSON, YAML or torch code).
"""
