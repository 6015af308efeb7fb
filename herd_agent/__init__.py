"""herd-agent: a host agent that joins k3s nodes on EC2 Auto Scaling Groups and removes them gracefully.

The package is kept lean at import: nothing here imports boto3 or a Kubernetes client.
Those load lazily, in the module that needs them.
"""

__version__ = "0.1.0"
