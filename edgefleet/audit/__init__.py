"""Privacy audit: canaries, a membership attack, and the ε the attack proves against the ε claimed.

It sits above ``train`` and ``federation`` (it drives the local update and the DP-FedAvg arithmetic
both), next to the CLI, so no dependency arrow runs backwards. ``stats`` is pure Python.
"""
