"""medrobust: train, serve, explain and audit the adversarial robustness of medical image classifiers."""

__version__ = "0.1.0"
