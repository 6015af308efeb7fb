"""Who am I and where is the control plane: IMDSv2 identity, EC2 tag discovery, health checks."""
