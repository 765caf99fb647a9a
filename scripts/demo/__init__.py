"""The oaknet demo: a root, two clusters and four worker nodes in namespaces, with traffic."""
