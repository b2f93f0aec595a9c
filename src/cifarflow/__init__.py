"""cifarflow: CIFAR-100 coarse-class classification as a Kubeflow Pipelines workflow."""

__version__ = "0.1.0"
