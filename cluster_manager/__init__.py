"""The cluster service manager: node subnets, the cluster's table cache and node feeds."""
