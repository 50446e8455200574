"""medrobust: train, serve, explain and audit the adversarial robustness of medical image classifiers.

This is the command package: the `medrobust` command (`cli`, `commands`), the one composition root
(`compose`) and the reproduction. Nothing in training/, service/ or audit/ imports it.
"""
