"""The distributed layer: several processes train one trial, or share one study.

``collective`` is one rank's DDP process group and rank 0's message channel, ``gang`` the local followers rank 0
starts and restarts, ``follower`` what every non-zero rank runs, ``torchrun`` the multi-node launch, and
``processes`` how any child process of lrsearch is stopped.
"""

__all__ = ["collective", "follower", "gang", "processes", "torchrun"]
